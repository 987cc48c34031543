"""The documents an evaluation returns and writes: the scores of every task with their means
(``scores.json``), and a Matryoshka sweep's scores at every dimension (``dims.json``)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any, Iterable

from ..core.results import TaskResult
from ..data.tasks import UMRB_GROUPS
from .scoring import EvalConfig


def summarize(results: list[TaskResult], *, model: str, benchmark: str,
              config: EvalConfig | None = None, model_key: str | None = None) -> dict[str, Any]:
    """The scores document: every task (:meth:`TaskResult.to_json`), plus averages by pool,
    category and UMRB group.

    A mean leaves out tasks without a score (``None``: nothing was scored) and is ``None`` when
    no task has one; ``n_failed_tasks`` counts the tasks in which some item failed.
    """
    def block(members: list[TaskResult]) -> dict[str, Any]:
        return {"main_score": _mean(r.main_score for r in members),
                "ndcg@10": _mean(r.metrics.get("ndcg@10") for r in members),
                "n_tasks": len(members)}

    averages: dict[str, dict[str, Any]] = {}
    for pool in sorted({r.pool for r in results}):
        in_pool = [r for r in results if r.pool == pool]
        by_cat = {cat: block([r for r in in_pool if r.category == cat])
                  for cat in sorted({r.category for r in in_pool})}
        by_group = {group: block(members) for group, cats in UMRB_GROUPS.items()
                    if (members := [r for r in in_pool if r.category in cats])}
        averages[pool] = {**block(in_pool), "modality_bias": _mean(r.modality_bias["bias"] for r in in_pool),
                          "n_failed_tasks": sum(r.failed for r in in_pool),
                          "by_category": by_cat, "by_group": by_group}
        reranked = [(r, r.rerank) for r in in_pool if r.rerank is not None]
        if reranked:  # the reranked headline beside the retriever's, per pool and category
            averages[pool]["rerank_main_score"] = _mean(rr.main_score for _, rr in reranked)
            averages[pool]["rerank_ndcg@10"] = _mean(rr.metrics.get("ndcg@10") for _, rr in reranked)
            for cat, block_ in by_cat.items():
                block_["rerank_main_score"] = _mean(rr.main_score for r, rr in reranked if r.category == cat)
    return {"model": model, "model_key": model_key or model, "benchmark": benchmark,
            "created": _now(), "config": asdict(config) if config else None,
            "tasks": [r.to_json() for r in results], "averages": averages}


def sweep_scores(by_dim: dict[int, dict[str, Any]], *, model: str, model_key: str,
                 benchmark: str) -> dict[str, Any]:
    """A dimension sweep in one document: per task and per pool mean, the headline and NDCG@10 at
    each dimension (keys are the dimensions as text), plus where each dimension's own scores are.
    ``by_dim`` holds each dimension's :func:`summarize` document."""
    dims = sorted(by_dim)
    tasks: dict[tuple[str, str], dict[str, Any]] = {}
    for dim in dims:
        for r in map(TaskResult.from_json, by_dim[dim]["tasks"]):
            row = tasks.setdefault((r.pool, r.task), {"task": r.task, "pool": r.pool, "main_metric": r.main_metric,
                                                      "main_score": {}, "ndcg@10": {}, "failed": False})
            row["main_score"][str(dim)] = r.main_score
            row["ndcg@10"][str(dim)] = r.metrics.get("ndcg@10")
            row["failed"] = row["failed"] or r.failed
    averages = {pool: {key: {str(dim): by_dim[dim]["averages"][pool][key] for dim in dims}
                       for key in ("main_score", "ndcg@10", "modality_bias")}
                for pool in by_dim[dims[0]]["averages"]}
    return {"model": model, "model_key": model_key, "benchmark": benchmark, "dims": dims, "created": _now(),
            "folders": {str(dim): f"dim-{dim}" for dim in dims},
            "tasks": list(tasks.values()), "averages": averages}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None
