"""Fast first stages: pick candidate documents with FAISS, then rerank them by exact MaxSim.

A first stage holds one or more float32 vectors per document in a FAISS inner-product index
(``index_factory``: ``"Flat"`` by default, exact over those vectors; any FAISS factory string,
e.g. ``"HNSW32"``, for sub-linear search at scale). Documents are numbered in the order they
were added, as the rows of the :class:`TokenVectors` they came from.

* :class:`MuveraStage`: one MUVERA fixed-dimensional encoding per document, the query's FDE
  searched for the ``depth`` best.
* :class:`PooledStage`: ``n_vectors`` pooled vectors per document (1: the mean of its tokens;
  more: the means of Ward clusters of its tokens, as token pooling makes them). Every query token
  searches the pooled vectors for its ``token_k`` best; a document's estimate is the sum over
  query tokens of its best retrieved product, a query token that retrieved none of the
  document's vectors counting its ``token_k``-th score (an upper bound on what it missed, as
  XTR imputes missing similarities). The ``depth`` best estimates are the candidates.

:class:`LateInteractionSearch` runs one of them (or none: exact search) and the exact rerank.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import numpy as np

from ...core.multivector.maxsim import maxsim_topk, rerank
from ...core.multivector.tokens import TokenVectors, as_queries
from .muvera import Muvera
from .pooling import centroids

__all__ = ["FIRST_STAGES", "FirstStage", "LateInteractionSearch", "MuveraStage", "PooledStage", "make_first_stage"]


def _bitmap_selector(allowed: np.ndarray):
    """A FAISS selector letting through the rows where ``allowed`` is True."""
    import faiss  # faiss is imported where it is used, as everywhere in umr.index (start-up time)

    bits = np.packbits(allowed.astype(np.uint8), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
    selector.buffer = bits  # the selector points into it: keep it alive with the selector
    return selector


class FirstStage(ABC):
    """Candidate documents for a MaxSim rerank, from vectors searched with FAISS."""

    #: the ``method`` name that selects it
    name: ClassVar[str]

    def __init__(self, dim: int, *, index_factory: str = "Flat"):
        import faiss

        self.dim, self.index_factory = int(dim), index_factory
        self.index = faiss.index_factory(self.vector_dim, index_factory, faiss.METRIC_INNER_PRODUCT)
        #: the document each indexed vector belongs to
        self.owners = np.zeros(0, np.int64)
        self.n_docs = 0

    @property
    @abstractmethod
    def vector_dim(self) -> int:
        """Dimension of the vectors the FAISS index holds."""

    @abstractmethod
    def document_vectors(self, docs: TokenVectors) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, owners)``: the float32 vectors of ``docs`` and the document (0-based in
        ``docs``) of each."""

    @abstractmethod
    def candidates(self, queries: TokenVectors | Sequence[np.ndarray], depth: int, *,
                   allowed: np.ndarray | None = None) -> np.ndarray:
        """``(n_queries, depth)`` document rows, best estimate first, -1 where fewer were found;
        ``allowed`` (a boolean mask over the documents) keeps the others out."""

    def params(self) -> dict[str, Any]:
        """What, with the FAISS index and :meth:`arrays`, rebuilds this stage."""
        return {"method": self.name, "dim": self.dim, "index_factory": self.index_factory}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"owners": self.owners}

    def add(self, docs: TokenVectors) -> None:
        """Index ``docs`` as the next documents (rows ``n_docs .. n_docs + len(docs) - 1``)."""
        vectors, owners = self.document_vectors(docs)
        if not self.index.is_trained:
            self.index.train(vectors)
        self.index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self.owners = np.concatenate([self.owners, owners + self.n_docs])
        self.n_docs += len(docs)

    def _search(self, vectors: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if allowed is not None and (allowed.dtype != bool or allowed.shape != (self.n_docs,)):
            raise ValueError(f"allowed must be a boolean mask over the {self.n_docs} documents")
        k = max(1, min(int(k), self.index.ntotal))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if allowed is None:
            return self.index.search(vectors, k)
        params = faiss.SearchParameters(sel=_bitmap_selector(allowed[self.owners]))
        return self.index.search(vectors, k, params=params)


class MuveraStage(FirstStage):
    """One MUVERA fixed-dimensional encoding per document (see :mod:`.muvera` for the parameters)."""

    name = "muvera"

    def __init__(self, dim: int, *, k_sim: int = 5, d_proj: int | None = 16, repetitions: int = 20,
                 final_dim: int | None = None, fill_empty: bool = True, seed: int = 0, index_factory: str = "Flat"):
        self.muvera = Muvera(dim, k_sim=k_sim, d_proj=d_proj, repetitions=repetitions, final_dim=final_dim,
                             fill_empty=fill_empty, seed=seed)
        super().__init__(dim, index_factory=index_factory)

    @property
    def vector_dim(self) -> int:
        return self.muvera.fde_dim

    def params(self) -> dict[str, Any]:
        return {**super().params(), **{k: v for k, v in self.muvera.params().items() if k != "dim"}}

    def arrays(self) -> dict[str, np.ndarray]:
        return {**super().arrays(), **self.muvera.arrays()}

    def document_vectors(self, docs: TokenVectors) -> tuple[np.ndarray, np.ndarray]:
        return self.muvera.encode_documents(docs), np.arange(len(docs))

    def candidates(self, queries, depth, *, allowed=None):
        _, found = self._search(self.muvera.encode_queries(queries), depth, allowed)
        return _pad(found, depth)


class PooledStage(FirstStage):
    """``n_vectors`` pooled vectors per document, searched per query token (module docstring)."""

    name = "pooled"

    def __init__(self, dim: int, *, n_vectors: int = 1, token_k: int = 256, index_factory: str = "Flat"):
        if n_vectors < 1 or token_k < 1:
            raise ValueError("n_vectors and token_k must be >= 1")
        self.n_vectors, self.token_k = int(n_vectors), int(token_k)
        super().__init__(dim, index_factory=index_factory)

    @property
    def vector_dim(self) -> int:
        return self.dim

    def params(self) -> dict[str, Any]:
        return {**super().params(), "n_vectors": self.n_vectors, "token_k": self.token_k}

    def document_vectors(self, docs: TokenVectors) -> tuple[np.ndarray, np.ndarray]:
        pooled = [centroids(docs[i], self.n_vectors) for i in range(len(docs))]
        owners = np.repeat(np.arange(len(docs)), [len(p) for p in pooled])
        return np.concatenate(pooled), owners

    def candidates(self, queries, depth, *, allowed=None):
        queries = as_queries(queries)
        scores, hits = self._search(queries.codes, self.token_k, allowed)
        out = np.full((len(queries), depth), -1, np.int64)
        for i in range(len(queries)):
            a, b = queries.offsets[i], queries.offsets[i + 1]
            token_scores, token_hits = scores[a:b], hits[a:b]
            found = token_hits >= 0
            docs, column = np.unique(self.owners[token_hits[found]], return_inverse=True)
            if len(docs) == 0:
                continue
            # each query token's floor: its last retrieved score (what any document it missed is below)
            floor = np.where(found, token_scores, np.inf).min(axis=1)
            best = np.repeat(floor[:, None], len(docs), axis=1)
            token_of = np.nonzero(found)[0]
            np.maximum.at(best, (token_of, column), token_scores[found])
            estimate = best.sum(axis=0)
            keep = min(depth, len(docs))
            top = np.argpartition(-estimate, keep - 1)[:keep]
            top = top[np.argsort(-estimate[top], kind="stable")]
            out[i, :keep] = docs[top]
        return out


def _pad(found: np.ndarray, depth: int) -> np.ndarray:
    if found.shape[1] >= depth:
        return found[:, :depth]
    return np.pad(found, ((0, 0), (0, depth - found.shape[1])), constant_values=-1)


#: ``method`` name -> first stage
FIRST_STAGES: dict[str, type[FirstStage]] = {stage.name: stage for stage in (MuveraStage, PooledStage)}


def make_first_stage(method: str, dim: int, **options: Any) -> FirstStage:
    """The first stage called ``method`` (``"muvera"`` or ``"pooled"``) for ``dim``-d tokens."""
    stage = FIRST_STAGES.get(method)
    if stage is None:
        raise ValueError(f"unknown first stage {method!r}: choose from {', '.join(FIRST_STAGES)} (or exact search)")
    return stage(dim, **options)


class LateInteractionSearch:
    """Top-k documents by MaxSim: exactly (no first stage), or the exact MaxSim of a first
    stage's ``depth`` candidates."""

    def __init__(self, docs: TokenVectors, first_stage: FirstStage | None = None):
        if first_stage is not None and first_stage.n_docs != len(docs):
            raise ValueError(f"the first stage indexes {first_stage.n_docs} documents, the collection has {len(docs)}")
        self.docs, self.first_stage = docs, first_stage

    @property
    def method(self) -> str:
        return "exact" if self.first_stage is None else self.first_stage.name

    def search(self, queries: TokenVectors | Sequence[np.ndarray], k: int = 10, *, depth: int = 100,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` ``(n_queries, k)``, best first, ``(-inf, -1)`` where fewer documents
        qualify; the scores are always exact MaxSim. ``depth``: candidates reranked per query
        (at least ``k``)."""
        queries = as_queries(queries)
        if self.first_stage is None:
            return maxsim_topk(queries, self.docs, k, allowed=allowed)
        found = self.first_stage.candidates(queries, max(int(depth), int(k)), allowed=allowed)
        return rerank(queries, self.docs, found, k)
