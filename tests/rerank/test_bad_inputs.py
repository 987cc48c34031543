"""Rerank inputs with bad records: an empty candidate, a record a reader failed, a missing and a
truncated image file are each that pair's error (named, kept in retrieval order) and the other
pairs are scored as they are alone; an evaluation with a reranker goes on past bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from rerank_fixtures import ConceptReranker

from umr.eval import Evaluator
from umr.core.results import Result
from umr.rerank import load_reranker
from umr.core.items import Item


def test_bad_candidates_are_named_and_the_rest_scored_as_alone(tiny_reranker_dir, images, tmp_path):
    reranker = load_reranker(tiny_reranker_dir)
    cut = tmp_path / "cut.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(cut)
    cut.write_bytes(cut.read_bytes()[:70])
    good = [Item.candidate("a wide picture of a field", id="t"), Item.candidate(image=images["wide"], id="w")]
    bad = [Item.candidate(" ", id="blank"), Item.failed("bad", "field 'txt' must be a string or null, got int"),
           Item.candidate(image=str(tmp_path / "nowhere.png"), id="missing"), Item.candidate(image=str(cut), id="cut")]
    candidates = [good[0], *bad[:2], good[1], *bad[2:]]
    result = reranker.score_pairs(reranker.make_pairs("a field", candidates), on_error="skip")
    assert result.indices.tolist() == [0, 3]
    reasons = {e.item_id: e.reason for e in result.errors}
    assert set(reasons) == {"blank", "bad", "missing", "cut"}
    assert reasons["bad"] == "field 'txt' must be a string or null, got int"
    assert reasons["blank"].startswith("has neither text nor image")
    alone = reranker.score("a field", good)
    np.testing.assert_allclose(result.scores, alone, atol=1e-5)

    results = [Result(i + 1, 1.0 - i / 10, c.id, "image" if c.image is not None else "text",
                      c.image if isinstance(c.image, str) else None, c.text, "pixels", {})
               for i, c in enumerate(candidates) if c.id != "bad"]
    with pytest.warns(UserWarning, match="not reranked"):
        reranked = reranker.rerank("a field", results, k=len(results))
    assert [r.id for r in reranked][:2] in (["t", "w"], ["w", "t"])
    assert [r.id for r in reranked][2:] == ["blank", "missing", "cut"]
    assert all("rerank_error" in r.meta for r in reranked[2:])


def test_an_evaluation_with_a_reranker_goes_on_past_bad_records(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("eval_conftest", Path(__file__).parents[1] / "eval" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    from umr.data.mbeir import load_mbeir

    root = fixtures.build_mbeir(tmp_path / "M-BEIR")
    pool = root / "cand_pool/local/mbeir_oven_task6_cand_pool.jsonl"
    records = [json.loads(line) for line in pool.read_text().splitlines()]
    records[3]["txt"] = ""
    records[4]["txt"] = ["not", "a", "string"]
    pool.write_text("".join(json.dumps(r) + "\n" for r in records))
    task = load_mbeir(root, tasks=["oven_task6"], instruction_policy="none")[0]
    evaluator = Evaluator(fixtures.OracleEmbedder(), reranker=ConceptReranker(), rerank_k=5)
    result = evaluator.evaluate_task(task).result
    assert result.failures.candidates == 2
    # queries 6:3 and 6:4 lost their positives to the bad records; the four others are hits before and after
    assert result.metrics["hit@5"] == pytest.approx(4 / 6)
    assert result.rerank.metrics["hit@5"] == pytest.approx(4 / 6)
