"""The one search pipeline: query → represent → embed → store search → optional rerank.

:meth:`umr.index.Index.search`, ``umr search`` and ``POST /v1/search`` all run
:func:`run_search`; they differ only in where each step runs (:class:`SearchStages`: the
caller's thread for the first two, the server's model thread and index lock for the HTTP API).

The rerank depth rule: with a reranker, the store returns ``max(k, rerank_k)`` candidates, the
reranker reorders the first ``rerank_k`` of them (those below keep their retrieval order), and
the first ``k`` are returned. The reranker reads the query as it was asked, not as the model saw
it (an image stays an image, not its OCR words).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol
from collections.abc import Sequence

import numpy as np

from ..core.items import Item
from ..core.results import Result
from ..models.base import ItemEmbedder
from ..rerank.base import Reranker
from ..rerank.registry import load_reranker
from .base import Filter, VectorStore, check_search_args
from .compact import check_rescore_k
from .multivector.store import MultiVectorStore  # issue 24

#: how many top results a reranker reorders unless told (``rerank_k``, ``--rerank-k``)
RERANK_K = 10


def query_text(text, image) -> str | None:
    """The query's text, or ``ValueError`` for an empty, blank or unencodable query."""
    if text is not None and not isinstance(text, str):
        raise TypeError(f"query text must be a string, not {type(text).__name__}")
    if text is not None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the query text is not valid UTF-8 (undecodable bytes in the argument)") from None
        if not text.strip():
            if image is None:
                raise ValueError("the query is empty: give some text, an image, or both")
            text = None
    if text is None and image is None:
        raise ValueError("a query needs text, an image, or both")
    return text


@dataclass(frozen=True)
class SearchQuery:
    """One search as every entry point asks it, checked when made (``ValueError``: an empty or
    blank query, ``k < 1``, ``ef_search < 1``). ``where`` and ``modality``: see
    :class:`~umr.index.Filter`."""

    text: str | None = None
    image: Any = None
    instruction: str | None = None
    modality: str | Sequence[str] | None = None
    where: dict[str, Any] | None = None
    k: int = 10
    method: str | None = None
    ef_search: int | None = None
    rerank_k: int = RERANK_K
    #: a query video (families that see video; issue 25)
    video: Any = None
    #: a quantised index's candidates rescored (None: the index's default; 0: none)
    rescore_k: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", query_text(self.text, self.image if self.video is None else self.video))
        check_search_args(self.k, self.ef_search)
        check_rescore_k(self.rescore_k)

    def item(self) -> Item:
        return Item.query(text=self.text, image=self.image, video=self.video, instruction=self.instruction, id="query")

    def depth(self, reranking: bool) -> int:
        """How many candidates the store returns (the module's rerank depth rule)."""
        return max(self.k, self.rerank_k) if reranking else self.k


class SearchStages(Protocol):
    """Where each step of :func:`run_search` runs."""

    def represent(self, query: Item) -> Item:
        """The query as the model sees it (:func:`~umr.index.representation.represent`)."""

    def embed(self, query: Item) -> np.ndarray:
        """The represented query's vector, shape ``(1, dim)`` (a multi-vector model: a list of
        one ``(n_tokens, dim)`` matrix)."""

    def search(self, vectors: np.ndarray, *, k: int, modality, where, method, ef_search,
               rescore_k) -> list[list[Result]]:
        """:func:`search_store` on the index's store."""

    def rerank(self, reranker: Reranker, query: Item, results: list[Result], k: int) -> list[Result]:
        """``reranker.rerank(query, results, k)``."""


def run_search(query: SearchQuery, stages: SearchStages, reranker: Reranker | None = None) -> list[Result]:
    """Ranked results for ``query``, reranked by ``reranker`` when given."""
    vectors = stages.embed(stages.represent(query.item()))
    results = stages.search(vectors, k=query.depth(reranker is not None), modality=query.modality,
                            where=query.where, method=query.method, ef_search=query.ef_search,
                            rescore_k=query.rescore_k)[0]
    if reranker is None:
        return results
    return stages.rerank(reranker, query.item(), results, query.rerank_k)[: query.k]


def as_reranker(rerank: Reranker | str | os.PathLike | None) -> Reranker | None:
    """A reranker, or one loaded by name (:func:`~umr.rerank.load_reranker`)."""
    return load_reranker(rerank) if isinstance(rerank, (str, os.PathLike)) else rerank


def search_store(store: VectorStore, queries: np.ndarray, *, k: int = 10,
                 modality: str | Sequence[str] | None = None, where: dict[str, Any] | None = None,
                 method: str | None = None, ef_search: int | None = None,
                 rescore_k: int | None = None) -> list[list[Result]]:
    """The store-search step: top-``k`` results per query vector, ranked from 1 (``rescore_k``:
    a quantised index's rescoring depth)."""
    check_search_args(k, ef_search)
    check_rescore_k(rescore_k)
    filter = Filter.make(modality, where)
    if isinstance(store, MultiVectorStore):  # issue 24: a token matrix per query
        if rescore_k is not None:
            raise ValueError("rescore_k is for a quantised single-vector index; a late-interaction index "
                             "reranks its first stage by exact MaxSim (ef_search sets how many)")
        hits = store.search(store.check_queries(queries), k, filter=filter, method=method, ef_search=ef_search)
    else:
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        if queries.shape[1] != store.dim:
            raise ValueError(f"query vectors are {queries.shape[1]}-d; the index holds {store.dim}-d")
        hits = store.search(queries, k, filter=filter, method=method, ef_search=ef_search, rescore_k=rescore_k)
    return [[Result.of(rank, hit) for rank, hit in enumerate(row, start=1)] for row in hits]


class Searchable(Protocol):
    """What :class:`LocalStages` needs of an index (:class:`umr.index.Index`)."""

    @property
    def model(self) -> ItemEmbedder: ...

    def represent(self, item: Item) -> Item: ...

    def search_vectors(self, queries: np.ndarray, *, k: int, modality, where, method,
                       ef_search, rescore_k) -> list[list[Result]]: ...


class LocalStages:
    """Every step in the caller's thread, with the index's own model (loaded on first embed)."""

    def __init__(self, index: Searchable):
        self.index = index

    def represent(self, query: Item) -> Item:
        return self.index.represent(query)

    def embed(self, query: Item) -> np.ndarray:
        return self.index.model.embed([query], show_progress_bar=False).vectors

    def search(self, vectors: np.ndarray, **options) -> list[list[Result]]:
        return self.index.search_vectors(vectors, **options)

    def rerank(self, reranker: Reranker, query: Item, results: list[Result], k: int) -> list[Result]:
        return reranker.rerank(query, results, k=k)
