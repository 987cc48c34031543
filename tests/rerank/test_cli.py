"""``umr rerank``: pairs JSONL in, float32 scores out, errors as ``umr embed`` reports them."""

from __future__ import annotations

import json
import shutil

import numpy as np

from umr.cli import main
from umr.rerank import load_reranker
from umr.core.items import Item


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_scores_in_input_order_with_relative_images(tmp_path, tiny_reranker_dir, images):
    shutil.copy(images["wide"], tmp_path / "wide.png")
    _write(tmp_path / "pairs.jsonl", [
        {"id": "a", "query": {"text": "a bicycle"}, "document": {"image": "wide.png"}},
        {"id": "b", "query": {"text": "a bicycle"}, "document": {"text": "a bike"}, "instruction": "Find bikes."},
    ])
    out = tmp_path / "scores.npy"
    assert main(["rerank", "--model", str(tiny_reranker_dir), "--input", str(tmp_path / "pairs.jsonl"),
                 "--output", str(out), "--no-progress"]) == 0
    scores = np.load(out)
    assert scores.dtype == np.float32 and scores.shape == (2,)
    reranker = load_reranker(tiny_reranker_dir)
    expected = [reranker.score(Item.query("a bicycle"), [Item.candidate(image=images["wide"])])[0],
                reranker.score(Item.query("a bicycle", instruction="Find bikes."), ["a bike"])[0]]
    assert np.abs(scores - expected).max() <= 1e-6


def test_bad_pairs_stop_or_are_skipped(tmp_path, tiny_reranker_dir, capsys):
    _write(tmp_path / "pairs.jsonl", [
        {"id": "a", "query": {"text": "q"}, "document": {"text": "d"}},
        {"id": "bad", "query": {"text": "q"}, "document": {"image": "missing.png"}},
        {"id": "c", "query": {"text": "q"}},
    ])
    args = ["rerank", "--model", str(tiny_reranker_dir), "--input", str(tmp_path / "pairs.jsonl"),
            "--output", str(tmp_path / "s.npy"), "--no-progress"]
    assert main(args) == 2
    assert "line 3, item 'c'" in capsys.readouterr().err
    assert main(args + ["--on-error", "skip"]) == 0
    assert np.load(tmp_path / "s.npy").shape == (1,)
    errors = [json.loads(line) for line in (tmp_path / "s.errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(2, "bad"), (3, "c")]
    assert json.loads((tmp_path / "s.ids.json").read_text()) == ["a"]


def test_an_option_the_family_lacks_is_a_usage_error(tmp_path, tiny_reranker_dir, capsys):
    _write(tmp_path / "pairs.jsonl", [{"id": "a", "query": {"text": "q"}, "document": {"text": "d"}}])
    assert main(["rerank", "--model", str(tiny_reranker_dir), "--family", "cross-encoder", "--input",
                 str(tmp_path / "pairs.jsonl"), "--output", str(tmp_path / "s.npy"),
                 "--max-image-tokens", "4"]) == 2
    assert "does not take --max-image-tokens" in capsys.readouterr().err


def test_zero_shot_prompts_file_and_task_field(tmp_path, tiny_qwen2vl_dir, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"mytask": "Is it a bicycle? True or False"}))
    _write(tmp_path / "pairs.jsonl", [{"id": "a", "query": {"text": "a bicycle"}, "document": {"text": "a bike"},
                                       "task": "mytask"}])
    out = tmp_path / "s.npy"
    base = ["rerank", "--model", str(tiny_qwen2vl_dir), "--input", str(tmp_path / "pairs.jsonl"), "--output", str(out)]
    assert main(base + ["--prompts", str(prompts), "--no-progress"]) == 0
    expected = load_reranker(tiny_qwen2vl_dir, prompts={"mytask": "Is it a bicycle? True or False"}).score(
        "a bicycle", ["a bike"], task="mytask")
    assert abs(np.load(out)[0] - expected[0]) <= 1e-6
    prompts.write_text(json.dumps({"mytask": 3}))
    assert main(base + ["--prompts", str(prompts)]) == 2
    assert "question strings" in capsys.readouterr().err
