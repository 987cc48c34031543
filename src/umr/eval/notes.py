"""What a finished task's result says in words: its scores, the queries it dropped and the items
that failed.

Read by the evaluator's log line, the reports and ``umr eval``'s summary alike; :func:`percent`
is the one way scores are shown.
"""

from __future__ import annotations

from ..core.results import TaskResult


def percent(value: float | None, digits: int = 2, unit: str = "") -> str:
    """A score in ``[0, 1]`` as a percentage (``0.8123`` -> ``81.23``); ``n/a`` for no score."""
    return "n/a" if value is None else f"{100 * value:.{digits}f}{unit}"


def dim_tag(dim: int | None) -> str:
    """``[dim 64] `` before a sweep's lines, nothing otherwise."""
    return "" if dim is None else f"[dim {dim}] "


def dropped_note(result: TaskResult) -> str:
    """``48 of 51 judged queries scored (1 absent from the queries, 2 failed)``, or '' if none dropped."""
    dropped = result.dropped_queries
    parts = [f"{n} {why}" for why, n in (("absent from the queries", dropped.absent), ("failed", dropped.failed),
                                         ("without judgements", dropped.unjudged)) if n]
    if not parts:
        return ""
    return f"{result.n_scored_queries} queries scored, dropped: " + ", ".join(parts)


def failure_note(result: TaskResult) -> str:
    """``2 of 50 queries, 54 of 195 candidates failed (q7: reason; ...)``, or '' if nothing failed."""
    failures = result.failures
    counts = [f"{failed} of {total} {role}" for role, failed, total in
              (("queries", failures.queries, result.n_queries), ("candidates", failures.candidates, result.n_candidates))
              if failed]
    if not counts:
        return ""
    first = "; ".join(f"{item.id}: {item.error}" for item in failures.first)
    return " and ".join(counts) + " failed" + (f" (first: {first})" if first else "")


def task_line(result: TaskResult) -> str:
    """One line about a finished task: its headline (and NDCG@10), bias, queries scored, failures."""
    shown = [(result.main_metric, result.main_score)]
    if result.main_metric != "ndcg@10":
        shown.append(("ndcg@10", result.metrics.get("ndcg@10")))
    bias = result.modality_bias
    line = (f"{dim_tag(result.dim)}{result.pool}/{result.task}: " + ", ".join(f"{n} = {percent(v)}" for n, v in shown)
            + f", modality bias@{bias['k']} = {percent(bias['bias'], 1, '%')}")
    if result.rerank is not None:
        line += f", reranked {result.main_metric} = {percent(result.rerank.main_score)}"
    note = dropped_note(result)
    if note:
        line += f"; {note}"
    failed = failure_note(result)
    return line + (f"; FAILED: {failed}" if failed else "")
