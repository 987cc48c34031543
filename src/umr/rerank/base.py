"""The one reranker interface every reranking family implements.

A reranker scores (query, candidate) pairs; higher is more relevant. A backend supplies two hooks —
``_cost`` (a cheap size estimate of one pair) and ``_score_batch`` (scores of a list of pairs) — and
inherits what users touch: :meth:`Reranker.score` / :meth:`Reranker.score_pairs` (cost-budget
batching with :func:`umr.models.base.plan_batches`, input order restored, progress bar, per-pair
errors as the embedders have them) and :meth:`Reranker.rerank`, which reorders a result list.
"""

from __future__ import annotations

import dataclasses
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.base import plan_batches, run_batches
from ..core.items import Item, ItemError, Modality, as_items
from ..core.results import Result

OnError = Literal["raise", "skip"]


@dataclass(frozen=True)
class Pair:
    """One query and one candidate to judge; ``task`` picks a task-specific prompt (optional)."""

    query: Item
    candidate: Item
    task: str | None = None


@dataclass
class ScoreResult:
    """Scores of the pairs that could be scored (``scores[j]`` is input pair ``indices[j]``), and
    why the others could not."""

    scores: np.ndarray
    indices: np.ndarray
    errors: list[ItemError] = field(default_factory=list)

    def full(self, n: int) -> np.ndarray:
        """A score per input pair, NaN where a pair could not be scored."""
        out = np.full(n, np.nan, dtype=np.float32)
        out[self.indices] = self.scores
        return out


@dataclass
class Reranking:
    """How a result list was reordered: ``order`` lists input positions, best first. ``scores`` has
    one entry per input position (NaN where not reranked: beyond ``k``, or failed)."""

    order: list[int]
    scores: np.ndarray
    errors: list[ItemError] = field(default_factory=list)


def reranked_order(scores: np.ndarray, head: int) -> list[int]:
    """Positions of a ranking after reranking its first ``head`` entries: those scored (not NaN) by
    score, ties in retrieval order; then the head's unscored ones in retrieval order; then the rest."""
    scored = [i for i in range(head) if not np.isnan(scores[i])]
    ranked = sorted(scored, key=lambda i: -float(scores[i]))  # a stable sort: ties keep their order
    return ranked + [i for i in range(head) if np.isnan(scores[i])] + list(range(head, len(scores)))


def as_item(value: Any, *, is_query: bool, index: int = 0) -> Item:
    """An :class:`~umr.core.items.Item` from an item, a string, an image, or an index ``Result``
    (whose file path is its image unless it is a text result); ``index`` is the id of one without."""
    if isinstance(value, Result):
        modality = Modality.parse(value.modality) if value.modality else Modality.TEXT
        image = value.path if modality in (Modality.IMAGE, Modality.FUSED) else None
        text = value.text if modality in (Modality.TEXT, Modality.FUSED) else None
        return Item(text=text, image=image, is_query=is_query, id=value.id)
    item = as_items([value], is_query=is_query)[0]
    own_id = (isinstance(value, Item) and value.id is not None) or (isinstance(value, dict) and "id" in value)
    if not own_id:
        item.id = str(index)
    return item


class Reranker(ABC):
    """Scores (query, candidate) pairs of any modality; higher is more relevant.

    Subclasses set ``name`` and implement :meth:`_cost` and :meth:`_score_batch`.
    """

    name: str
    #: the family that loaded it (``qwen3-vl-reranker``, ``zero-shot``, ``cross-encoder``), set by
    #: ``load_reranker``; None when built by hand
    family: str | None = None
    #: the folder it was loaded from, set by ``load_reranker``; None when built by hand
    folder: Path | None = None
    #: whether it reads pixels (a text cross-encoder does not)
    sees_images: bool = True
    #: at most this many pairs in one forward pass
    batch_size: int = 8
    #: at most this much padded cost (``pairs x largest cost``) per forward pass; None = no limit
    cost_budget: int | None = None

    # -- what users call -------------------------------------------------------------------

    def score(self, queries: Sequence[Item | str] | Item | str, candidates: Sequence[Item | str], *,
              task: str | None = None, batch_size: int | None = None,
              show_progress_bar: bool | None = None) -> np.ndarray:
        """Scores ``(len(candidates),)`` float32 of ``queries[i]`` with ``candidates[i]``; one query
        (not a list) is paired with every candidate. The first bad pair raises :class:`ItemError`."""
        pairs = self.make_pairs(queries, candidates, task=task)
        return self.score_pairs(pairs, batch_size=batch_size, show_progress_bar=show_progress_bar).scores

    @staticmethod
    def make_pairs(queries, candidates, *, task: str | None = None) -> list[Pair]:
        candidates = [as_item(c, is_query=False, index=i) for i, c in enumerate(candidates)]
        if isinstance(queries, (Item, str)):
            queries = [queries] * len(candidates)
        queries = [as_item(q, is_query=True, index=i) for i, q in enumerate(queries)]
        if len(queries) != len(candidates):
            raise ValueError(f"{len(queries)} queries for {len(candidates)} candidates: give one query per "
                             f"candidate, or one query for all")
        return [Pair(q, c, task) for q, c in zip(queries, candidates)]

    def score_pairs(self, pairs: Sequence[Pair], *, batch_size: int | None = None,
                    show_progress_bar: bool | None = None, on_error: OnError = "raise") -> ScoreResult:
        """Score pairs as they are. With ``on_error="skip"`` bad pairs are left out and listed in
        :attr:`ScoreResult.errors` (naming the bad item); the rest score as they would alone."""
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        errors: dict[int, ItemError] = {}
        costs: dict[int, int] = {}
        for i, pair in enumerate(pairs):
            try:
                pair.query.modality  # noqa: B018 - raises for an item with neither text nor image
                pair.candidate.modality  # noqa: B018
                for item in (pair.query, pair.candidate):
                    if item.video is not None:
                        raise ItemError(item.id, f"{self.name} cannot score video items")
                costs[i] = int(self._cost(pair))
            except ItemError as exc:
                if on_error == "raise":
                    raise exc.at(index=i) from None
                errors[i] = exc.at(index=i)
        good = sorted(costs)
        size = batch_size or self.batch_size
        plan = plan_batches([costs[i] for i in good], max_items=size, budget=self.cost_budget)
        scores = np.zeros(len(pairs), dtype=np.float32)
        done = np.zeros(len(pairs), dtype=bool)
        if show_progress_bar is None:
            show_progress_bar = sys.stderr.isatty() and len(good) > size
        with tqdm(total=len(good), disable=not show_progress_bar, desc=f"rerank [{self.name}]",
                  unit="pair", dynamic_ncols=True) as bar:
            def run(positions: list[int]):
                with torch.inference_mode():
                    return self._score_batch([pairs[i] for i in positions])

            for positions, out in run_batches(plan, good, run, on_error=on_error, errors=errors, bar=bar):
                scores[positions] = torch.as_tensor(out).float().reshape(-1).cpu().numpy()
                done[positions] = True
        indices = np.flatnonzero(done)
        return ScoreResult(scores=scores[indices], indices=indices, errors=[errors[i] for i in sorted(errors)])

    def reranking(self, query: Item | str, results: Sequence[Any], k: int = 10, *, task: str | None = None,
                  batch_size: int | None = None, show_progress_bar: bool | None = False) -> Reranking:
        """Score the first ``k`` results against ``query`` and order them by score (ties keep the
        retrieval order). A result that cannot be scored is reported in ``errors`` and keeps its
        retrieval order below the reranked ones; results beyond ``k`` follow, unchanged."""
        if k < 1:
            raise ValueError(f"k must be at least 1, not {k}")
        head = list(range(min(k, len(results))))
        pairs = self.make_pairs(query, [results[i] for i in head], task=task)
        scored = self.score_pairs(pairs, batch_size=batch_size, show_progress_bar=show_progress_bar,
                                  on_error="skip")
        scores = np.full(len(results), np.nan, dtype=np.float32)
        scores[scored.indices] = scored.scores
        return Reranking(order=reranked_order(scores, len(head)), scores=scores, errors=scored.errors)

    def rerank(self, query: Item | str, results: Sequence[Any], k: int = 10, *, task: str | None = None,
               batch_size: int | None = None, show_progress_bar: bool | None = False) -> list:
        """``results`` (index ``Result`` objects or items) reordered by :meth:`reranking`.

        ``Result`` objects come back renumbered, ``score`` the reranker's, and ``meta`` keeping
        ``retrieval_rank`` / ``retrieval_score``; those not reranked keep their retrieval score,
        a failed one with ``meta["rerank_error"]``. Failures are also warned about, by id.
        """
        reranking = self.reranking(query, results, k, task=task, batch_size=batch_size,
                                   show_progress_bar=show_progress_bar)
        reasons = {e.index: e for e in reranking.errors}
        for err in reranking.errors:
            warnings.warn(f"rerank [{self.name}]: not reranked: {err}", stacklevel=2)
        out = []
        for rank, i in enumerate(reranking.order, start=1):
            value = results[i]
            if isinstance(value, Result):
                meta = {**value.meta, "retrieval_rank": value.rank, "retrieval_score": value.score}
                score = value.score
                if not np.isnan(reranking.scores[i]):
                    score = float(reranking.scores[i])
                    meta["rerank_score"] = score
                if i in reasons:
                    meta["rerank_error"] = reasons[i].reason
                value = dataclasses.replace(value, rank=rank, score=score, meta=meta)
            out.append(value)
        return out

    def options(self) -> dict:
        """Every option this instance was loaded with that changes its scores, as plain values;
        it keys cached scores (see :func:`umr.rerank.registry.reranker_key`)."""
        return {}

    # -- what backends implement -----------------------------------------------------------

    @abstractmethod
    def _cost(self, pair: Pair) -> int:
        """A cheap estimate of the pair's forward cost (tokens incl. image tokens); raise
        :class:`ItemError` for a pair that cannot be scored."""

    @abstractmethod
    def _score_batch(self, pairs: list[Pair]) -> torch.Tensor | np.ndarray:
        """Scores ``(len(pairs),)``; raise :class:`ItemError` with ``index`` set to the pair's
        position in ``pairs`` when one pair cannot be scored (it is dropped, the rest rerun)."""

    @staticmethod
    def _each_pair(pairs: list[Pair], prepare):
        """``[prepare(pair) for pair in pairs]``, an :class:`ItemError` located at its pair."""
        prepared = []
        for i, pair in enumerate(pairs):
            try:
                prepared.append(prepare(pair))
            except ItemError as exc:
                raise exc.at(index=i) from None
        return prepared

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
