"""``umr verify --reranker``: umr's reranker fast path against each family's reference on the
built-in probe pairs — holding where umr is right, and failing, naming the pairs, where a
setting departs or umr computes something else."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from umr.cli import main
from umr.core.items import Item
from umr.rerank import load_reranker
from umr.verify import PairProbe, ScoreTolerance, pair_probes, verify_reranker
from umr.verify.references.rerank_base import RerankReference
from umr.verify.references.rerank_generative import GenerativeRerankerReference
from umr.verify.references.rerank_qwen3vl import Qwen3VLRerankerReference
from umr.verify.rerankers import PairResult, compare_scores, rank_agreement

CPU = ScoreTolerance.for_run("float32", "cpu")


@pytest.fixture(scope="module")
def cross_encoder_dirs(tmp_path_factory):
    """Two tiny cross-encoders of different weights: the one under test and another."""
    from umr.testing import write_tiny_cross_encoder

    root = tmp_path_factory.mktemp("vr")
    return write_tiny_cross_encoder(root / "tiny-cross-encoder"), write_tiny_cross_encoder(root / "other", seed=1)


def _kinds(out: str) -> dict[str, str]:
    """``{probe kind: verdict}`` from the printed table."""
    rows = {}
    for line in out.splitlines():
        parts = line.rsplit(None, 3)
        if len(parts) == 4 and parts[-1] in ("ok", "DIFFERS", "error"):
            rows[parts[0].rsplit(None, 1)[0].strip()] = parts[-1]
    return rows


def test_tiny_qwen3vl_reranker_matches_its_reference_on_every_pair_kind(tiny_reranker_dir, tmp_path):
    # a window of 300 tokens and at most 64 tokens an image (both sides) keep the test short
    reranker = load_reranker(tiny_reranker_dir, max_length=300, max_image_tokens=64)
    reference = Qwen3VLRerankerReference(tiny_reranker_dir, max_length=300, max_pixels=64 * 32 * 32)
    report = verify_reranker(reranker, reference=reference, workdir=tmp_path)
    assert report.ok, report.table()
    kinds = {row["kind"] for row in report.rows()}
    assert {"text -> text", "text -> long text, past the window", "text -> image RGBA", "text -> image CMYK",
            "fused + instruction -> fused / text / image", "text -> PDF page"} <= kinds
    assert all(probe.delta <= 1e-5 for probe in report.probes)
    assert rank_agreement(report.probes) == 1.0
    assert np.ptp([probe.ours for probe in report.probes]) > 1e-3  # the pairs really differ


@pytest.mark.slow
def test_qwen3vl_reranker_cli_at_the_reference_defaults(tiny_reranker_dir, tmp_path, capsys):
    code = main(["verify", "--reranker", str(tiny_reranker_dir), "--json", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "reference umr's Qwen3-VL-Reranker reference scorer" in out and "OK: 23 of 23 pairs" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True and report["family"] == "qwen3-vl-reranker" and report["rank_agreement"] == 1.0
    long = [p for p in report["probes"] if p["kind"] == "text -> long text, past the window"]
    assert long and all(p["ok"] for p in long)


@pytest.mark.slow
def test_zero_shot_reranker_matches_a_plain_logits_computation(tiny_qwen2vl_dir, capsys):
    code = main(["verify", "--reranker", str(tiny_qwen2vl_dir)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "plain model(**inputs).logits" in out and set(_kinds(out).values()) == {"ok"}


def test_zero_shot_reranker_composites_transparency_as_the_processor_does(tiny_qwen2vl_dir, tmp_path):
    """Found by umr verify: the zero-shot reranker dropped an RGBA image's alpha (PIL's
    ``convert("RGB")``) where the model's own processor composites it on white."""
    rng = np.random.RandomState(3)
    image = Image.fromarray(rng.randint(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA")
    image.save(tmp_path / "rgba.png")
    probe = PairProbe("text -> image RGBA", Item.query("a red bicycle", id="q"),
                      Item.candidate(image=str(tmp_path / "rgba.png"), id="rgba"))
    reference = GenerativeRerankerReference(tiny_qwen2vl_dir)
    results = compare_scores(load_reranker(tiny_qwen2vl_dir), reference, [probe], CPU)
    assert results[0].ok, results[0]


def test_a_changed_question_fails_and_names_the_pairs_it_changes(tiny_qwen2vl_dir, tmp_path):
    reranker = load_reranker(tiny_qwen2vl_dir, prompts={"text->text": "Is the candidate relevant? True or False"})
    probes = [p for p in pair_probes(tmp_path, sees_images=True)
              if p.kind in ("text -> text", "text + instruction -> text") or p.document.id == "image-RGB-37x53.png"]
    results = compare_scores(reranker, GenerativeRerankerReference(tiny_qwen2vl_dir), probes, CPU)
    failed = {r.id for r in results if not r.ok}
    assert failed == {p.id for p in probes if p.document.image is None}
    assert all(r.error is None for r in results)


def test_cross_encoder_matches_sentence_transformers(cross_encoder_dirs, capsys):
    code = main(["verify", "--reranker", str(cross_encoder_dirs[0])])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "CrossEncoder" in out
    assert _kinds(out) == {"text -> text": "ok", "text + instruction -> text": "ok",
                           "text -> long text, past the window": "ok"}  # it reads no pixels: text pairs only


def test_a_departing_max_length_fails_naming_the_long_pairs(cross_encoder_dirs, capsys):
    code = main(["verify", "--reranker", str(cross_encoder_dirs[0]), "--max-length", "40"])
    out = capsys.readouterr().out
    assert code == 1
    assert _kinds(out)["text -> long text, past the window"] == "DIFFERS"
    assert "differs: query-plain -> text-past-window [text -> long text, past the window]" in out
    assert out.rstrip().splitlines()[-1].startswith("FAILED")


def test_a_pair_either_side_cannot_score_is_that_pairs_error(cross_encoder_dirs):
    class Refusing(RerankReference):
        description, window = "refuses one document", None

        def score(self, query, document):
            if document.id == "refused":
                raise ValueError("HTTP 400: too long\nthe rest of the body")
            return float(reranker.score(query, [document])[0])

    reranker = load_reranker(cross_encoder_dirs[0])
    query = Item.query("a bicycle", id="q")
    probes = [PairProbe("text -> text", query, Item.candidate("a bike", id="fine")),
              PairProbe("text -> text", query, Item.candidate("a bike", id="refused")),
              PairProbe("text -> image", query, Item.candidate(image=b"not an image", id="img"))]
    results = compare_scores(reranker, Refusing(), probes, CPU)
    assert [r.ok for r in results] == [True, False, False]
    assert results[1].error == "reference: ValueError: HTTP 400: too long"
    assert results[2].error.startswith("umr: ") and "cannot see images" in results[2].error


def test_rank_agreement_counts_pairs_of_one_querys_documents():
    results = [PairResult("a", "k", "q1", 0.9, 0.8, True), PairResult("b", "k", "q1", 0.5, 0.6, True),
               PairResult("c", "k", "q1", 0.1, 0.7, True), PairResult("d", "k", "q2", 0.3, 0.3, True)]
    assert rank_agreement(results) == pytest.approx(2 / 3)  # (a,b) (a,c) alike, (b,c) swapped; q2 has one
    assert rank_agreement(results[3:]) is None


def test_score_tolerance_depends_on_dtype_and_device():
    cpu, gpu, half = CPU, ScoreTolerance.for_run("float32", "cuda"), ScoreTolerance.for_run("bfloat16", "cuda")
    assert cpu.holds(5e-6) and not cpu.holds(5e-5)
    assert gpu.holds(1e-3) and not gpu.holds(1e-2)
    assert half.holds(2e-2) and not half.holds(0.1)


def test_model_or_reranker_not_both(cross_encoder_dirs, capsys):
    assert main(["verify", "--model", "minilm", "--reranker", str(cross_encoder_dirs[0])]) == 2
    assert "not both" in capsys.readouterr().err
