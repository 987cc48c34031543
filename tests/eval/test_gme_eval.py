"""The evaluator with a real MLLM code path (tiny random GME) on the M-BEIR-layout fixture.

Its UniIR Recall@k must equal a ranking computed here from ``encode_queries`` /
``encode_candidates`` alone (score descending, ties by docid descending as trec_eval orders).
"""

from __future__ import annotations

import numpy as np
import pytest

import umr
from umr.data.mbeir import load_mbeir
from umr.eval import evaluate


@pytest.fixture(scope="module")
def tiny_gme(tiny_gme_dir):
    return umr.load_model(tiny_gme_dir, max_image_tokens=16, min_image_tokens=4)


def _hit_at(model, task, k: int) -> float:
    queries = model.encode_queries(task.queries)
    candidates = model.encode_candidates(task.candidates)
    dids = [c.id for c in task.candidates]
    hits = []
    for query, vector in zip(task.queries, queries):
        positives = {d for d, grade in task.qrels.get(query.id, {}).items() if grade > 0}
        scores = candidates @ vector
        ranked = sorted(range(len(dids)), key=lambda j: (-float(scores[j]), _desc(dids[j])))[:k]
        hits.append(1.0 if positives & {dids[j] for j in ranked} else 0.0)
    return float(np.mean(hits))


def _desc(did: str):
    return tuple(-ord(ch) for ch in did) + (1,)  # docid descending, a prefix before its extensions


def test_evaluator_with_tiny_gme_equals_a_ranking_from_encode(mbeir_dir, tiny_gme, tmp_path):
    tasks = load_mbeir(mbeir_dir, pool="local") + load_mbeir(mbeir_dir, pool="global")
    scores = evaluate(tiny_gme, tasks, output=tmp_path / "out", benchmark="mbeir")
    by_task = {(r["task"], r["pool"]): r for r in scores["tasks"]}
    assert len(by_task) == 6
    for task in tasks:
        result = by_task[(task.name, task.pool)]
        assert result["metrics"]["hit@5"] == pytest.approx(_hit_at(tiny_gme, task, 5), abs=1e-9), task.name
        assert 0.0 <= result["modality_bias"]["bias"] <= 1.0
    assert (tmp_path / "out" / "report.html").is_file()
