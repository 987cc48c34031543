"""Retrieval metrics computed exactly as the references compute them.

* ``ndcg@k``, ``map``, ``map@k``, ``mrr``, ``recall@k``, ``p@k`` follow ``trec_eval`` (and so
  ``pytrec_eval`` and BEIR): a run is ordered by score, descending, with **ties broken by docid,
  descending** (trec_eval's order, whatever rank a run file claims); a document is relevant when
  its qrels grade is ``>= relevance_level`` (MAP, MRR, recall, precision); NDCG uses the graded
  qrels values themselves as gains (grades ``<= 0`` gain nothing), with the ideal ranking built
  from every judged document.
* ``mrr@k`` is the reciprocal rank of the first relevant document within the top ``k``, 0 beyond
  (BEIR / MTEB's MRR@k); ``mrr`` is trec_eval's ``recip_rank`` (no cut-off).
* ``hit@k`` is **UniIR's Recall@k** (M-BEIR's "R@k"): 1 if *any* positive (grade > 0) is among the
  top ``k``, else 0; a query without positives scores 0, as in UniIR's ``compute_recall_at_k``.

MAP, like every metric here, is computed on the run as it is written: the evaluator keeps the
top ``depth`` candidates per query (100 by default), exactly what trec_eval would score from the
run file.

:func:`evaluate_run` scores every query of the qrels it is given (one the run does not answer
scores 0, like ``trec_eval -c``); which queries those are is the caller's choice, and the
evaluator makes it per benchmark (:func:`umr.eval.scoring.scored_queries`: BEIR's queries run with
judgements, or UniIR's every query). :func:`mean_metrics` with ``average="run"`` averages over
the queries both the run and the qrels hold, like plain ``trec_eval`` / ``pytrec_eval``.
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Mapping, Sequence

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

DEFAULT_K = (1, 5, 10, 20, 50, 100)


def trec_order(scores: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval's order: score descending, ties by docid descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (float(kv[1]), kv[0]), reverse=True)]


def _log2_discounts(n: int) -> list[float]:
    return [1.0 / math.log2(i + 2) for i in range(n)]


def query_metrics(ranking: Sequence[str], judged: Mapping[str, int], *,
                  k_values: Iterable[int] = DEFAULT_K, ndcg_k: Iterable[int] = (10,),
                  mrr_k: Iterable[int] = (10,), map_k: Iterable[int] = (),
                  relevance_level: int = 1) -> dict[str, float]:
    """Every metric for one query, from its ranked document ids and its qrels."""
    k_values, ndcg_k, mrr_k, map_k = list(k_values), list(ndcg_k), list(mrr_k), list(map_k)
    relevant = {d for d, g in judged.items() if g >= relevance_level}
    positives = {d for d, g in judged.items() if g > 0}
    n_rel = len(relevant)
    out: dict[str, float] = {}

    # positions (0-based) of relevant documents in the ranking
    rel_flags = [d in relevant for d in ranking]
    first = next((i for i, f in enumerate(rel_flags) if f), None)
    out["mrr"] = 0.0 if first is None else 1.0 / (first + 1)
    for k in mrr_k:
        out[f"mrr@{k}"] = 0.0 if first is None or first >= k else 1.0 / (first + 1)

    # average precision, full run and cut
    precisions: list[tuple[int, float]] = []
    hits = 0
    for i, flag in enumerate(rel_flags):
        if flag:
            hits += 1
            precisions.append((i, hits / (i + 1)))
    out["map"] = sum(p for _, p in precisions) / n_rel if n_rel else 0.0
    for k in map_k:
        out[f"map@{k}"] = sum(p for i, p in precisions if i < k) / n_rel if n_rel else 0.0

    cum = [0] * (len(rel_flags) + 1)
    for i, flag in enumerate(rel_flags):
        cum[i + 1] = cum[i] + int(flag)
    for k in k_values:
        found = cum[min(k, len(rel_flags))]
        out[f"recall@{k}"] = found / n_rel if n_rel else 0.0
        out[f"p@{k}"] = found / k
        top = ranking[:k]
        out[f"hit@{k}"] = 1.0 if positives and any(d in positives for d in top) else 0.0

    gains_sorted = sorted((g for g in judged.values() if g > 0), reverse=True)
    for k in ndcg_k:
        disc = _log2_discounts(k)
        dcg = sum(max(judged.get(d, 0), 0) * disc[i] for i, d in enumerate(ranking[:k]))
        idcg = sum(g * disc[i] for i, g in enumerate(gains_sorted[:k]))
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
    return out


def evaluate_run(run: Run, qrels: Qrels, *, k_values: Iterable[int] = DEFAULT_K,
                 ndcg_k: Iterable[int] = (10,), mrr_k: Iterable[int] = (10,), map_k: Iterable[int] = (),
                 relevance_level: int = 1) -> dict[str, dict[str, float]]:
    """Per-query metrics for every query of ``qrels`` (missing from the run: an empty ranking)."""
    options = dict(k_values=tuple(k_values), ndcg_k=tuple(ndcg_k), mrr_k=tuple(mrr_k),
                   map_k=tuple(map_k), relevance_level=relevance_level)
    return {qid: query_metrics(trec_order(run.get(qid, {})), judged, **options)
            for qid, judged in qrels.items()}


def mean_metrics(per_query: Mapping[str, Mapping[str, float]], *, run: Run | None = None,
                 average: Literal["qrels", "run"] = "qrels") -> dict[str, float]:
    """Mean of each metric over queries (all of ``per_query``, or those ``run`` answers)."""
    qids = list(per_query)
    if average == "run":
        if run is None:
            raise ValueError("average='run' needs the run")
        qids = [q for q in qids if q in run]
    elif average != "qrels":
        raise ValueError(f"average must be 'qrels' or 'run', not {average!r}")
    if not qids:
        return {}
    names = list(per_query[qids[0]])
    return {name: sum(per_query[q][name] for q in qids) / len(qids) for name in names}


def modality_bias(rankings: Mapping[str, Sequence[str]], modalities: Mapping[str, str], target: str,
                  k: int) -> dict[str, float | dict[str, float]]:
    """MM-Embed's modality-bias diagnostic for one task.

    ``bias`` is the share of all top-``k`` results (over every query) whose modality differs from
    the task's ``target`` modality; ``shares`` breaks the top-``k`` results down by modality.
    With no results at all there is nothing to measure: ``bias`` is ``None``.
    """
    counts: dict[str, int] = {}
    total = 0
    for ranking in rankings.values():
        for doc in ranking[:k]:
            modality = modalities.get(doc, "unknown")
            counts[modality] = counts.get(modality, 0) + 1
            total += 1
    if total == 0:
        return {"bias": None, "k": k, "target": target, "shares": {}}
    off = total - counts.get(target, 0)
    return {"bias": off / total, "k": k, "target": target,
            "shares": {m: c / total for m, c in sorted(counts.items())}}
