"""Regressions of the evaluator: stale cached pools, model options, cache folders, headline
metrics, a torn ``errors.jsonl`` and TREC ids with whitespace."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from umr.cli import main
from umr.data.beir import load_beir_task
from umr.eval import Evaluator
from umr.eval.cache import EmbeddingStore
from umr.eval.metrics import evaluate_run, mean_metrics
from umr.eval.tasks import RetrievalTask
from umr.eval.trec import read_run, write_qrels, write_run
from umr.models.base import Embedder
from umr.core.items import Item, ItemError, Modality

STDLIB_DOCS = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"


class WordEmbedder(Embedder):
    """Bag of hashed words (64-d); cannot embed images. ``sign`` = -1 makes a different model."""

    dim = 64

    def __init__(self, name: str = "words", sign: float = 1.0):
        self.name = name
        self.sign = sign
        self.calls = 0

    def _cost(self, item: Item) -> int:
        if item.image is not None:
            raise ItemError(item.id, "a text model cannot embed an image")
        return 1

    def _embed_batch(self, items):
        self.calls += len(items)
        out = np.zeros((len(items), self.dim), np.float32)
        for row, item in enumerate(items):
            for word in (item.text or "").split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-9)
        return self.sign * out


def _text_task(i: int, *, qid: str = "q0", cand_id: str = "d") -> RetrievalTask:
    cands = [Item.candidate(text=f"w{i}x{j}", id=f"T{i}-{cand_id}{j}") for j in range(3)]
    return RetrievalTask(name=f"T{i}", queries=[Item.query(text=f"w{i}x0", id=qid)], candidates=cands,
                         qrels={qid: {f"T{i}-{cand_id}0": 1}}, category="T→T", target_modality=Modality.TEXT,
                         dataset="x", pool="corpus")


# 1. a freed candidate list's id() is reused by the next task's list --------------------------------

def test_freed_candidate_list_id_reuse_does_not_serve_previous_vectors():
    evaluator = Evaluator(WordEmbedder())
    seen_ids, reused = set(), False
    for i in range(300):
        task = _text_task(i)
        list_id = id(task.candidates)
        reused |= list_id in seen_ids
        seen_ids.add(list_id)
        outcome = evaluator.evaluate_task(task)
        del task  # frees the list: CPython hands its id to a later task's list
        # the query is its positive's text: with this task's vectors they match exactly
        assert outcome.run["q0"][f"T{i}-d0"] == pytest.approx(1.0), f"task T{i} searched another pool's vectors"
        if reused and i > 20:
            break
    assert reused, "the interpreter never reused a list id: the scenario was not exercised"


# 2. model options (dtype, image token bounds) key the cache and the finished tasks -----------------

def test_cli_rerun_with_other_model_options_is_refused_not_overwritten(tmp_path, monkeypatch, capsys):
    """An output folder belongs to one model with its options: another run into it would overwrite
    the first one's results (it used to), so it is refused, naming both; each gets its own folder."""
    import umr.cli.eval as cli_eval

    loaded = []

    def fake_load(args):
        loaded.append((args.dtype, args.min_image_tokens, args.max_image_tokens))
        return WordEmbedder(str(args.model), sign=-1.0 if args.dtype else 1.0)

    monkeypatch.setattr(cli_eval, "load_model_from_args", fake_load)
    out = tmp_path / "out"

    def run(output, *extra):
        code = main(["eval", "--model", "words", "--benchmark", "beir", "--data", str(STDLIB_DOCS),
                     "--output", str(output), "--no-progress", *extra])
        return code, capsys.readouterr().err

    assert "already done" not in run(out)[1]
    assert "already done, skipped" in run(out)[1]  # same options: resumes
    first = (out / "scores.json").read_text()
    for extra in (("--dtype", "bfloat16"), ("--max-image-tokens", "256"),
                  ("--min-image-tokens", "4", "--max-image-tokens", "256")):
        code, err = run(out, *extra)
        assert code == 2 and "holds the results of model 'words', not 'words[" in err and "own output folder" in err
    assert (out / "scores.json").read_text() == first and loaded == [(None, None, None)]
    code, err = run(tmp_path / "bf16", "--dtype", "bfloat16")
    assert code == 0 and "already done" not in err and loaded[-1] == ("bfloat16", None, None)
    assert json.loads((tmp_path / "bf16/scores.json").read_text())["model_key"] == "words[dtype=bfloat16]"
    # a folder written before folders recorded their model is refused to another model too
    (out / "model.json").unlink()
    code, err = run(out, "--model", "other")
    assert code == 2 and "holds the results of model 'words'" in err


def test_model_key_separates_cache_folders_and_results(tmp_path):
    task = load_beir_task(STDLIB_DOCS)
    a = Evaluator(WordEmbedder("m"), output=tmp_path / "a")
    a.evaluate_task(task)
    b_model = WordEmbedder("m", sign=-1.0)  # the same name loaded with other options
    with pytest.raises(ValueError, match=r"holds the results of model 'm', not 'm\[dtype=bfloat16\]'"):
        Evaluator(b_model, output=tmp_path / "a", model_key="m[dtype=bfloat16]")
    b = Evaluator(b_model, output=tmp_path / "b", model_key="m[dtype=bfloat16]")
    assert b.store.dir.name != a.store.dir.name
    outcome = b.evaluate_task(task)
    assert b_model.calls > 0 and outcome.run  # embedded and scored again, not "already done"


# 3. cache folders of different models never coincide -----------------------------------------------

def test_distinct_model_names_never_share_a_cache_folder(tmp_path):
    assert EmbeddingStore(tmp_path, "org/model").dir != EmbeddingStore(tmp_path, "org_model").dir
    long = "/home/me/experiments/" + "long-run-name-" * 9
    a, b = WordEmbedder(long + "checkpoint-500"), WordEmbedder(long + "checkpoint-1000", sign=-1.0)
    items = [Item.candidate(text="hello world", id="d0")]
    store_a, store_b = EmbeddingStore(tmp_path, a.name), EmbeddingStore(tmp_path, b.name)
    assert store_a.dir != store_b.dir
    assert store_a.dir.name.startswith("_home_me_experiments_long-run-name-")  # still readable
    va, vb = store_a.embed(a, items)[0], store_b.embed(b, items)[0]
    np.testing.assert_allclose(vb, b.embed(items).vectors)
    assert not np.allclose(va, vb)


# 4. the headline metric is computed at its k, whatever its case; an unknown one is refused ---------

@pytest.mark.parametrize("headline, key", [("ndcg@5", "ndcg@5"), ("mrr@100", "mrr@100"), ("nDCG@10", "ndcg@10"),
                                           ("MAP", "map"), ("Recall@3", "recall@3"), ("map@7", "map@7")])
def test_headline_metric_is_computed_at_its_k(headline, key):
    task = load_beir_task(STDLIB_DOCS)
    task.main_metric = headline
    outcome = Evaluator(WordEmbedder()).evaluate_task(task)
    metric = key.split("@")[0]
    k = (int(key.split("@")[1]),) if "@" in key else ()
    options = {"ndcg": {"ndcg_k": k}, "mrr": {"mrr_k": k}, "map": {"map_k": k}}.get(metric, {"k_values": k})
    expected = mean_metrics(evaluate_run(outcome.run, task.qrels, **options))[key]
    assert outcome.result.main_metric == key
    assert expected > 0 and outcome.result.main_score == pytest.approx(expected)


@pytest.mark.parametrize("headline", ["bleu@10", "ndcg", "ndcg@0", "ndcg@ten"])
def test_unknown_headline_metric_is_refused(headline, tmp_path, monkeypatch, capsys):
    task = load_beir_task(STDLIB_DOCS)
    task.main_metric = headline
    model = WordEmbedder()
    with pytest.raises(ValueError, match="unknown headline metric"):
        Evaluator(model).evaluate_task(task)
    assert model.calls == 0
    data = tmp_path / "task"
    shutil.copytree(STDLIB_DOCS, data)
    meta = json.loads((data / "task.json").read_text())
    (data / "task.json").write_text(json.dumps({**meta, "main_metric": headline}))
    import umr.cli.eval as cli_eval

    monkeypatch.setattr(cli_eval, "load_model_from_args", lambda args: WordEmbedder())
    code = main(["eval", "--model", "words", "--benchmark", "beir", "--data", str(data),
                 "--output", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and f"unknown headline metric {headline!r}" in capsys.readouterr().err


# 5. a torn last line of errors.jsonl ----------------------------------------------------------------

def test_torn_errors_line_is_ignored_and_next_append_starts_a_fresh_line(tmp_path):
    model = WordEmbedder()
    store = EmbeddingStore(tmp_path, model.name)
    store.embed(model, [Item.candidate(text="ok", id="a"), Item.candidate(image="/nope.png", id="b")])
    errors = store.dir / "errors.jsonl"
    with errors.open("a", encoding="utf-8") as handle:
        handle.write('{"fp": "abc", "id": "c", "err')  # killed mid-write
    store = EmbeddingStore(tmp_path, model.name)  # must not crash
    _, kept, failed, _ = store.embed(model, [Item.candidate(image="/nope.png", id="b"),
                                             Item.candidate(image="/other.png", id="c")])
    assert len(kept) == 0 and set(failed) == {0, 1}
    lines = errors.read_text(encoding="utf-8").splitlines()
    assert lines[1] == '{"fp": "abc", "id": "c", "err'
    assert [json.loads(line)["id"] for i, line in enumerate(lines) if i != 1] == ["b", "c"]
    reopened = EmbeddingStore(tmp_path, model.name)
    assert len(reopened.errors) == 2


# 6. TREC ids cannot contain whitespace --------------------------------------------------------------

def test_write_run_refuses_ids_with_whitespace(tmp_path):
    path = tmp_path / "run.trec"
    with pytest.raises(ValueError, match=r"query id 'q 1'.*whitespace"):
        write_run(path, {"q 1": {"d1": 0.5}})
    with pytest.raises(ValueError, match=r"document id 'doc\\ta'"):
        write_run(path, {"q1": {"doc\ta": 0.5}})
    with pytest.raises(ValueError, match="task tag"):
        write_run(path, {"q1": {"d1": 0.5}}, task_tags={"q1": "task 7"})
    with pytest.raises(ValueError, match="document id 'd 1'"):
        write_qrels(tmp_path / "qrels.txt", {"q1": {"d 1": 1}})
    assert not path.exists() and not (tmp_path / "qrels.txt").exists()
    write_run(path, {"q1": {"d1": 0.5}})
    assert read_run(path) == {"q1": {"d1": 0.5}}


def test_evaluator_refuses_whitespace_ids_before_embedding_when_writing_files(tmp_path):
    model = WordEmbedder()
    with pytest.raises(ValueError, match=r"task corpus/T1: candidate id 'T1-doc 0'"):
        Evaluator(model, output=tmp_path).evaluate([_text_task(0), _text_task(1, cand_id="doc ")])
    with pytest.raises(ValueError, match=r"query id 'q 0'"):
        Evaluator(model, output=tmp_path).evaluate_task(_text_task(2, qid="q 0"))
    assert model.calls == 0
    # without an output folder nothing is written, so such ids are fine
    outcome = Evaluator(model).evaluate_task(_text_task(3, cand_id="doc "))
    assert outcome.run["q0"]["T3-doc 0"] == pytest.approx(1.0)
