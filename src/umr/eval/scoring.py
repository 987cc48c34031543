"""Task scoring: what is computed (:class:`EvalConfig`), the exact search that makes a task's run,
the queries its means are taken over, and its metrics and modality bias — into a
:class:`~umr.core.results.TaskResult`.

Means follow each benchmark's reference (the task's ``average``): BEIR-style tasks average over
the queries that were run and have judgements, as BEIR, MTEB and trec_eval do; M-BEIR averages
over every query of the task, as UniIR does (a failed query scores 0).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from ..core.results import DroppedQueries, FailedItem, Failures, TaskResult
from ..data.tasks import RetrievalTask
from ..index.exact import search_exact
from .metrics import evaluate_run, mean_metrics, modality_bias, trec_order
from .trec import drop_identical_ids, run_from_topk

#: how many failure reasons a task's result keeps (and the summaries show)
FIRST_REASONS = 3

#: a run: ``{query id: {candidate id: score}}``
Run = dict[str, dict[str, float]]


@dataclass
class EvalConfig:
    """What is computed. ``depth`` is how many candidates each query's run keeps."""

    depth: int = 100
    k_values: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    ndcg_k: tuple[int, ...] = (10,)
    mrr_k: tuple[int, ...] = (10,)
    map_k: tuple[int, ...] = ()
    relevance_level: int = 1
    #: k of the modality-bias diagnostic; None = the task's headline k (5, or 10 for fashion)
    bias_k: int | None = None
    batch_size: int | None = None
    #: the embedding cache commits every this many items or seconds (as ``umr index`` does), so
    #: an interruption loses at most that much work
    commit_every: int = 256
    commit_seconds: float = 30.0
    show_progress: bool = False

    def signature(self) -> str:
        fields = {k: v for k, v in asdict(self).items()
                  if k not in ("batch_size", "commit_every", "commit_seconds", "show_progress")}
        return hashlib.sha1(json.dumps(fields, sort_keys=True, default=list).encode()).hexdigest()[:12]


#: metric -> whether it needs ``@k``; spelled as :func:`umr.eval.metrics.query_metrics` names them
_METRICS = {"ndcg": True, "recall": True, "p": True, "hit": True, "mrr": False, "map": False}
_ALIASES = {"precision": "p"}
_HEADLINE = re.compile(r"^([a-z]+)(?:@(\d+))?$")


def headline_metric(name: str) -> tuple[str, str, int | None]:
    """Parse a headline metric name (``ndcg@10``, ``nDCG@5``, ``MRR@100``, ``map``, ``hit@5``, ...).

    Returns ``(key, metric, k)``, ``key`` being the name the scores use (``ndcg@10``); raises
    ``ValueError`` for a metric the evaluator does not compute.
    """
    match = _HEADLINE.match(str(name).strip().lower())
    metric = _ALIASES.get(match.group(1), match.group(1)) if match else None
    k = int(match.group(2)) if match and match.group(2) is not None else None
    if metric not in _METRICS or (k is None and _METRICS[metric]) or (k is not None and k < 1):
        raise ValueError(f"unknown headline metric {name!r}: use ndcg@k, recall@k, p@k, hit@k, mrr, "
                         f"mrr@k, map or map@k (k >= 1, any case)")
    return (metric if k is None else f"{metric}@{k}"), metric, k


def search_run(task: RetrievalTask, queries: tuple[Any, np.ndarray], candidates: tuple[Any, np.ndarray],
               depth: int, search: Callable[[Any, Any, int], tuple[np.ndarray, np.ndarray]] = search_exact) -> Run:
    """Each embedded query's top ``depth`` embedded candidates, by exact inner product (or
    ``search(queries, candidates, k)``: a late-interaction model's MaxSim); each side is
    ``(what search takes, positions in the task's list)``."""
    (qvecs, qkept), (cvecs, ckept) = queries, candidates
    # BEIR searches one deeper when it drops the query itself, so that ``depth`` results remain
    scores, rows = search(qvecs, cvecs, depth + int(task.ignore_identical_ids))
    run = run_from_topk([task.queries[i].id for i in qkept], scores, rows, [task.candidates[i].id for i in ckept])
    return drop_identical_ids(run, depth) if task.ignore_identical_ids else run


def scored_queries(task: RetrievalTask, run: Run) -> tuple[list[str], dict[str, int]]:
    """The queries a task's means are taken over, and how many were left out, by why.

    ``"run"`` (BEIR, trec_eval): queries that were run and have judgements; ``absent`` counts
    judged query ids the task does not hold, ``failed`` judged queries that could not be
    embedded, ``unjudged`` queries run without judgements. ``"queries"`` (UniIR): every query.
    """
    qids = [q.id for q in task.queries]
    if task.average == "queries":
        return qids, {"absent": 0, "failed": 0, "unjudged": 0}
    if task.average != "run":
        raise ValueError(f"task {task.name}: average must be 'run' or 'queries', not {task.average!r}")
    held = set(qids)
    scored = [q for q in qids if q in run and q in task.qrels]
    return scored, {"absent": sum(q not in held for q in task.qrels),
                    "failed": sum(q not in run and q in task.qrels for q in qids),
                    "unjudged": sum(q in run and q not in task.qrels for q in qids)}


def measure(task: RetrievalTask, config: EvalConfig, run: Run,
            scored: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """A run's mean metrics over the ``scored`` queries — the configured ones, plus the task's
    hit@k and its headline at its k — and its modality bias."""
    _, metric, metric_k = headline_metric(task.headline)
    wanted = {name: set(getattr(config, name)) for name in ("k_values", "ndcg_k", "mrr_k", "map_k")}
    wanted["k_values"].add(task.hit_k)
    if metric_k is not None:
        wanted[{"ndcg": "ndcg_k", "mrr": "mrr_k", "map": "map_k"}.get(metric, "k_values")].add(metric_k)
    per_query = evaluate_run(run, {q: task.qrels.get(q, {}) for q in scored},
                             **{name: tuple(sorted(ks)) for name, ks in wanted.items()},
                             relevance_level=config.relevance_level)
    rankings = {qid: trec_order(scores) for qid, scores in run.items()}
    return mean_metrics(per_query), modality_bias(rankings, task.candidate_modalities(), str(task.target_modality),
                                                  config.bias_k or task.hit_k)


def task_result(task: RetrievalTask, *, metrics: dict[str, float], bias: dict[str, Any], scored: list[str],
                dropped: dict[str, int], query_errors: dict[int, str], candidate_errors: dict[int, str],
                seconds: dict[str, float], signature: str, dim: int | None) -> TaskResult:
    """The result of ``task`` from its scores and the items that failed (errors by position)."""
    headline = headline_metric(task.headline)[0]
    first = [FailedItem(task.queries[i].id, "query", why) for i, why in list(query_errors.items())[:FIRST_REASONS]]
    first += [FailedItem(task.candidates[i].id, "candidate", why)
              for i, why in list(candidate_errors.items())[:FIRST_REASONS - len(first)]]
    return TaskResult(
        task=task.name, dataset=task.dataset, pool=task.pool, category=task.category, group=task.group,
        target_modality=str(task.target_modality), hit_k=task.hit_k,
        main_metric=headline, main_score=metrics.get(headline), metrics=metrics, modality_bias=bias,
        n_queries=len(task.queries), n_judged_queries=len(task.qrels), n_candidates=len(task.candidates),
        average=task.average, ignore_identical_ids=task.ignore_identical_ids,
        n_scored_queries=len(scored), dropped_queries=DroppedQueries(**dropped),
        query_errors={task.queries[i].id: why for i, why in query_errors.items()},
        candidate_errors=len(candidate_errors),
        failures=Failures(queries=len(query_errors), candidates=len(candidate_errors), first=first),
        seconds=seconds, signature=signature, metadata=task.metadata, dim=dim)
