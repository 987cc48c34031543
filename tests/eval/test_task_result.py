"""A task's result is a typed TaskResult whose JSON (task files, scores.json) keeps the keys and
order umr has always written, and reads back files written before later keys existed."""

from __future__ import annotations

import json

from umr.core.results import TaskResult
from umr.data.mbeir import MBEIR
from umr.eval import Evaluator
from umr.eval.notes import percent, task_line
from umr.eval.report import compare, markdown_report

#: the keys of a task's JSON, in the order every version of umr wrote them
KEYS = ["task", "dataset", "pool", "category", "group", "target_modality", "hit_k", "main_metric", "main_score",
        "metrics", "modality_bias", "n_queries", "n_judged_queries", "n_candidates", "average",
        "ignore_identical_ids", "n_scored_queries", "dropped_queries", "query_errors", "candidate_errors",
        "failures", "seconds", "signature", "metadata"]


def test_the_written_result_reads_back_as_the_result_returned(mbeir_dir, oracle, tmp_path):
    task = MBEIR(mbeir_dir).task("nights_task4", pool="local")
    result = Evaluator(oracle, output=tmp_path / "out").evaluate_task(task).result
    written = json.loads((tmp_path / "out" / "tasks" / "local" / "nights_task4.json").read_text())
    assert list(written) == KEYS
    assert list(written["failures"]) == ["queries", "candidates", "first"]
    assert list(written["dropped_queries"]) == ["absent", "failed", "unjudged"]
    assert TaskResult.from_json(written) == result and result.to_json() == written
    assert result.main_metric == "hit@5" and result.main_score == 1.0 and not result.failed


def _old_task(name: str, score: float | None) -> dict:
    """A task as an early version wrote it: no scored-query count, metadata, drops or failures."""
    return {"task": name, "dataset": "SciFact", "pool": "corpus", "category": "t->t", "group": "single-modal",
            "target_modality": "text", "hit_k": 10, "main_metric": "ndcg@10", "main_score": score,
            "metrics": {} if score is None else {"ndcg@10": score, "hit@10": 1.0},
            "modality_bias": {"bias": 0.0, "k": 10, "target": "text", "shares": {"text": 1.0}},
            "n_queries": 4, "n_candidates": 9}


def test_results_written_before_later_keys_existed_are_read_and_reported():
    old = TaskResult.from_json(_old_task("scifact", 0.5))
    assert old.n_scored_queries == 4 and old.metadata == {} and old.rerank is None and not old.failed
    assert old.dropped_queries.absent == old.failures.queries == 0
    assert task_line(old) == "corpus/scifact: ndcg@10 = 50.00, modality bias@10 = 0.0%"
    scores = {"model": "m", "benchmark": "beir", "tasks": [_old_task("scifact", 0.5), _old_task("nfcorpus", None)],
              "averages": {"corpus": {"main_score": 0.5, "ndcg@10": 0.5, "n_tasks": 2, "modality_bias": 0.0,
                                      "n_failed_tasks": 0, "by_category": {}, "by_group": {}}}}
    report = markdown_report(scores)
    assert "| scifact | t->t | SciFact | NDCG@10 | 50.00 |" in report
    assert "| nfcorpus | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a | 4 |" in report
    table = compare(scores, {**scores, "tasks": [_old_task("scifact", 0.75)]})
    assert "| scifact | corpus | NDCG@10 | 50.00 | 75.00 | +25.00 |" in table
    assert "| nfcorpus | corpus | NDCG@10 | n/a | – | only in A |" in table


def test_one_percent_formatter():
    assert percent(0.81234) == "81.23" and percent(None) == "n/a" and percent(0.5, 1, "%") == "50.0%"
    assert percent(None, 1, "%") == "n/a"
