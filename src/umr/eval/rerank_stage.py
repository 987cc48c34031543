"""The rerank stage of an evaluation: each query's top ``k`` candidates of the retriever's run
reordered by a :class:`~umr.rerank.Reranker`, its scores cached on disk and resumable."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..core.results import RerankScores
from ..data.tasks import RetrievalTask
from ..rerank.base import Pair, Reranker, reranked_order
from ..rerank.cache import RerankStore
from .metrics import trec_order
from .scoring import Run


class RerankStage:
    """Reranks runs with ``reranker``, whose scores are cached under ``root`` keyed by ``key``
    (:func:`umr.rerank.registry.reranker_key`: the same model loaded differently is another key)."""

    def __init__(self, reranker: Reranker, *, k: int, key: str, root: Path, chunk_size: int):
        if k < 1:
            raise ValueError(f"rerank_k must be at least 1, not {k}")
        self.reranker, self.k, self.key = reranker, k, key
        self.store = RerankStore(root, key, chunk_size=chunk_size)

    @property
    def tag(self) -> str:
        """What the stage adds to a result's signature: the reranker and its depth."""
        return f"rerank={self.key}@{self.k}"

    def rerank(self, task: RetrievalTask, run: Run, *, batch_size: int | None,
               show_progress: bool) -> tuple[Run, dict[str, dict[str, str]], float]:
        """The run with each query's top ``k`` reranked (scores: ``n - position``), the pairs that
        could not be scored (``{query id: {candidate id: reason}}``), and the seconds it took."""
        queries = {q.id: q for q in task.queries}
        candidates = {c.id: c for c in task.candidates}
        rankings = {qid: trec_order(scores) for qid, scores in run.items()}
        pairs, where = [], []
        for qid, ranking in rankings.items():
            for position, cid in enumerate(ranking[: self.k]):
                pairs.append(Pair(queries[qid], candidates[cid], task.name))
                where.append((qid, position))
        t0 = time.perf_counter()
        scores, errors, _ = self.store.score(self.reranker, pairs, batch_size=batch_size,
                                             show_progress_bar=show_progress)
        seconds = time.perf_counter() - t0
        by_query = {qid: np.full(len(ranking), np.nan, dtype=np.float32) for qid, ranking in rankings.items()}
        failed: dict[str, dict[str, str]] = {}
        for j, (qid, position) in enumerate(where):
            by_query[qid][position] = scores[j]
            if j in errors:
                failed.setdefault(qid, {})[rankings[qid][position]] = errors[j]
        reranked = {}
        for qid, ranking in rankings.items():
            order = reranked_order(by_query[qid], min(self.k, len(ranking)))
            reranked[qid] = {ranking[i]: float(len(order) - rank) for rank, i in enumerate(order)}
        return reranked, failed, seconds

    def scores(self, headline: str, metrics: dict[str, float], bias: dict, pair_errors: dict[str, dict[str, str]]
               ) -> RerankScores:
        """The reranked run's scores, as a task's result holds them."""
        return RerankScores(model=self.key, k=self.k, main_score=metrics.get(headline), metrics=metrics,
                            modality_bias=bias, pair_errors=pair_errors)
