"""Typed outputs, in one leaf place so that any layer can produce or read them.

:class:`EmbedResult` is what an embedder returns, :class:`Hit` what a vector store returns,
:class:`Result` what a search returns (and what a reranker reorders), :class:`Summary` what an
indexing run did, :class:`TaskResult` what evaluating one retrieval task scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from .entries import ReadReport
from .items import ItemError


@dataclass
class EmbedResult:
    """Vectors for the items that could be embedded, and why the others could not.

    ``vectors[j]`` belongs to input position ``indices[j]``; ``indices`` is increasing.
    """

    vectors: np.ndarray
    indices: np.ndarray
    errors: list[ItemError] = field(default_factory=list)

    def part(self, start: int, stop: int) -> "EmbedResult":
        """The result of input positions ``start:stop`` alone, positions counted from ``start``:
        one caller's share of a batch that several callers shared (the server's micro-batcher)."""
        keep = (self.indices >= start) & (self.indices < stop)
        errors = [err.at(index=err.index - start) for err in self.errors
                  if err.index is not None and start <= err.index < stop]
        return replace(self, vectors=self._vectors_at(keep), indices=np.asarray(self.indices[keep]) - start,
                       errors=errors)

    def _vectors_at(self, keep: np.ndarray):
        """The vectors of the positions ``keep`` (a mask over :attr:`indices`) selects."""
        return self.vectors[keep]


@dataclass
class Hit:
    """One stored record a vector store found, with its inner-product score."""

    score: float
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclass
class Result:
    """One search result: its rank (from 1), score, id, and what the index stored about it."""

    rank: int
    score: float
    id: str
    modality: str
    path: str | None
    text: str | None
    via: str | None
    meta: dict[str, Any]

    @property
    def start(self) -> float | None:
        """A video segment's first second (``meta["start"]``); None for other results."""
        return self.meta.get("start") if self.modality.startswith("video") else None

    @property
    def end(self) -> float | None:
        """A video segment's last second (``meta["end"]``); None for other results."""
        return self.meta.get("end") if self.modality.startswith("video") else None

    def to_dict(self) -> dict[str, Any]:
        """As JSON; a video result also carries ``start`` and ``end`` (seconds) at the top."""
        out = {"rank": self.rank, "score": self.score, "id": self.id, "modality": self.modality,
               "path": self.path, "text": self.text, "via": self.via, "meta": self.meta}
        if self.start is not None:
            out.update(start=self.start, end=self.end)
        return out

    @classmethod
    def of(cls, rank: int, hit: Hit) -> "Result":
        """The result at ``rank`` for a store's hit."""
        r = hit.record
        return cls(rank=rank, score=hit.score, id=r["id"], modality=r.get("modality") or "",
                   path=r.get("path"), text=r.get("text"), via=r.get("via"), meta=r.get("meta") or {})


@dataclass
class Summary:
    """What one indexing run (``Index.add`` / ``Index.index_corpus``) did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    #: items with no representation under the model (e.g. photos without text, text-only model)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: what the corpus reader passed over (ignored files) and reshaped (passages, cut texts)
    read: ReadReport | None = None

    def line(self) -> str:
        return (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"deleted {self.deleted}, skipped {len(self.skipped)}, errors {len(self.errors)}")


@dataclass
class DroppedQueries:
    """Judged queries a BEIR-style mean leaves out, by why (M-BEIR's means drop none)."""

    #: judged in the qrels but not held by the task's queries
    absent: int = 0
    #: judged, but could not be embedded
    failed: int = 0
    #: run, but without judgements
    unjudged: int = 0


@dataclass
class FailedItem:
    """One item of a task that could not be embedded, and why."""

    id: str
    role: str  # "query" or "candidate"
    error: str


@dataclass
class Failures:
    """How many of a task's queries and candidates could not be embedded, and the first reasons."""

    queries: int = 0
    candidates: int = 0
    first: list[FailedItem] = field(default_factory=list)


@dataclass
class RerankScores:
    """A task's scores after reranking each query's top ``k`` with the reranker ``model``."""

    model: str
    k: int
    main_score: float | None
    metrics: dict[str, float]
    modality_bias: dict[str, Any]
    #: pairs the reranker could not score: ``{query id: {candidate id: reason}}``
    pair_errors: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class TaskResult:
    """One evaluated task: its scores, what was left out or failed, and what it was computed from.

    :meth:`to_json` is the task's entry in ``scores.json`` and its ``tasks/<pool>/<task>.json``
    file (the keys are the field names, in this order; ``rerank`` and ``dim`` only when set);
    :meth:`from_json` reads those files back, also ones written before a key existed.
    """

    task: str
    dataset: str
    pool: str
    category: str
    group: str
    target_modality: str
    hit_k: int
    #: the headline metric's key in ``metrics`` (``hit@5``, ``ndcg@10``, ...) and its value;
    #: None when nothing was scored
    main_metric: str
    main_score: float | None
    metrics: dict[str, float]
    #: :func:`umr.eval.metrics.modality_bias`: ``bias``, ``k``, ``target``, ``shares``
    modality_bias: dict[str, Any]
    n_queries: int
    n_judged_queries: int
    n_candidates: int
    #: how the means are taken: "run" (BEIR: queries run and judged) or "queries" (M-BEIR: all)
    average: str
    ignore_identical_ids: bool
    n_scored_queries: int
    dropped_queries: DroppedQueries
    #: why each query that failed could not be embedded, by query id
    query_errors: dict[str, str]
    candidate_errors: int
    failures: Failures
    #: wall time of the search, the scoring and the whole task
    seconds: dict[str, float]
    #: what the result depends on (model, config, task content): a rerun with the same skips it
    signature: str
    metadata: dict[str, Any]
    rerank: RerankScores | None = None
    #: the Matryoshka dimension the task was scored at (a sweep), or None
    dim: int | None = None

    @property
    def failed(self) -> bool:
        """Whether some query or candidate could not be embedded."""
        return bool(self.failures.queries or self.failures.candidates)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in ("rerank", "dim"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TaskResult":
        """A result from :meth:`to_json`'s output; keys later versions added get their defaults."""
        failures = data.get("failures") or {}
        rerank = data.get("rerank")
        n_queries = data.get("n_queries", 0)
        return cls(
            task=data["task"], dataset=data.get("dataset", ""), pool=data["pool"],
            category=data.get("category", ""), group=data.get("group", ""),
            target_modality=data.get("target_modality", ""), hit_k=data.get("hit_k", 0),
            main_metric=data["main_metric"], main_score=data["main_score"], metrics=data["metrics"],
            modality_bias=data.get("modality_bias") or {"bias": None, "k": 0, "target": "", "shares": {}},
            n_queries=n_queries, n_judged_queries=data.get("n_judged_queries", 0),
            n_candidates=data.get("n_candidates", 0), average=data.get("average", "run"),
            ignore_identical_ids=data.get("ignore_identical_ids", False),
            n_scored_queries=data.get("n_scored_queries", n_queries),
            dropped_queries=DroppedQueries(**(data.get("dropped_queries") or {})),
            query_errors=data.get("query_errors") or {}, candidate_errors=data.get("candidate_errors", 0),
            failures=Failures(queries=failures.get("queries", 0), candidates=failures.get("candidates", 0),
                              first=[FailedItem(**item) for item in failures.get("first", [])]),
            seconds=data.get("seconds") or {}, signature=data.get("signature", ""),
            metadata=data.get("metadata") or {},
            rerank=RerankScores(**rerank) if rerank is not None else None, dim=data.get("dim"))
