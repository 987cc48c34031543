"""Exact MaxSim (late interaction) over a ragged collection, scanned in blocks of whole documents.

``score(Q, D) = sum over query tokens q of max over document tokens d of <q, d>`` — computed on
the documents' own tokens only: no padding ever takes part in a max (colpali-engine's batched
scorer pads with zero vectors, so a query token whose products with a short document are all
negative scores 0 there instead of its true best).

How it runs (the fastest of the strategies measured on an AVX2 CPU, see
``benchmarks/late_interaction.py``): a block of whole documents' codes is widened to float32 into a
reused buffer (float16/int8 casts run at several Gelem/s in torch once no page faults are paid
for fresh allocations), multiplied by the folded query tokens (of every query in the batch) in
one float32 ``torch.mm`` into a reused ``(query tokens, block tokens)`` score buffer, reduced to
each document's max by a reshape (documents of equal length) or ``np.maximum.reduceat`` (ragged),
and summed per query. Blocks are large (a byte budget, :data:`SCORE_ELEMENTS` and
:data:`BLOCK_BYTES`): every block costs two thread-pool synchronisations (the cast and the
product), and on a loaded machine each one waits for a descheduled thread, so blocks of a few
thousand tokens ran at a quarter of the matrix product's rate where blocks of tens of thousands
reach it. Memory stays bounded by the two budgets (about 100 MB), whatever the collection's size;
the result of :func:`maxsim_topk` is kept as a running top-k.
"""

from __future__ import annotations

import warnings
from typing import Iterator, Sequence

import numpy as np
import torch

from .tokens import TokenVectors, as_float32, as_queries

__all__ = ["BLOCK_BYTES", "SCORE_ELEMENTS", "maxsim", "maxsim_topk", "rerank"]

#: float32 values in one block's score matrix (query tokens x document tokens): 64 MB, so that
#: each block's product is billions of FLOPs for a batch of queries (per-block overhead amortised)
SCORE_ELEMENTS = 1 << 24
#: bytes of one widened (float32) block of document tokens: 32 MB, which bounds the block of a
#: single query (whose score matrix is small)
BLOCK_BYTES = 1 << 25
#: fewest document tokens per block (a large query batch must still amortise each block's overhead)
MIN_BLOCK_TOKENS = 256


class _Scanner:
    """Queries folded for one encoding, with the buffers that every block reuses."""

    def __init__(self, queries: TokenVectors, docs: TokenVectors, block_tokens: int | None):
        if queries.dim != docs.dim:
            raise ValueError(f"queries have {queries.dim}-d token vectors, the documents {docs.dim}-d")
        self.encoding = docs.encoding
        self.n_queries = len(queries)
        self.q_tokens, bias = self.encoding.fold(torch.from_numpy(queries.codes))
        q_lengths = queries.lengths
        self.q_starts = queries.offsets[:-1]
        #: queries of one length are summed by a reshape; mixed ones by reduceat
        self.q_length = int(q_lengths[0]) if np.all(q_lengths == q_lengths[0]) else None
        # a constant per query token passes through the max: added once per query after it
        self.bias = None if bias is None else np.add.reduceat(bias.numpy(), self.q_starts)
        n_q_tokens = len(queries.codes)
        if block_tokens is None:
            widened_tokens = BLOCK_BYTES // (4 * self.encoding.block_width)
            block_tokens = max(min(SCORE_ELEMENTS // n_q_tokens, widened_tokens), MIN_BLOCK_TOKENS)
        self.block_tokens = max(min(int(block_tokens), docs.n_tokens), int(docs.lengths.max()))
        self._widened = torch.empty((self.block_tokens, self.encoding.block_width))
        self._scores = torch.empty(n_q_tokens * self.block_tokens)

    def blocks(self, offsets: np.ndarray) -> Iterator[tuple[int, int]]:
        """Runs ``[start, stop)`` of whole documents holding at most ``block_tokens`` tokens."""
        n, start = len(offsets) - 1, 0
        while start < n:
            stop = int(np.searchsorted(offsets, offsets[start] + self.block_tokens, side="right")) - 1
            stop = min(max(stop, start + 1), n)
            yield start, stop
            start = stop

    def score(self, codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """MaxSim of every query against the documents whose codes are ``codes`` (their token
        rows starting at ``offsets[:-1]``, relative to ``codes``): ``(n_queries, n_docs)``."""
        n = len(codes)
        with warnings.catch_warnings():  # read-only memory maps: torch warns, we never write to them
            warnings.simplefilter("ignore", UserWarning)
            block = torch.from_numpy(codes)
        widened = self.encoding.widen(block, self._widened[:n])
        products = torch.mm(self.q_tokens, widened.t(), out=self._scores[:len(self.q_tokens) * n]
                            .view(len(self.q_tokens), n))
        lengths = np.diff(offsets)
        if np.all(lengths == lengths[0]):
            best = products.view(len(self.q_tokens), len(lengths), int(lengths[0])).amax(dim=2).numpy()
        else:
            best = np.maximum.reduceat(products.numpy(), offsets[:-1], axis=1)
        if self.q_length is not None:
            scores = best.reshape(self.n_queries, self.q_length, -1).sum(axis=1)
        else:
            scores = np.add.reduceat(best, self.q_starts, axis=0)
        if self.bias is not None:
            scores += self.bias[:, None]
        return scores


def _scan(queries: TokenVectors, docs: TokenVectors, block_tokens: int | None,
          allowed: np.ndarray | None = None) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, scores)`` for consecutive runs of documents (runs with no allowed document
    skipped)."""
    scanner = _Scanner(queries, docs, block_tokens)
    offsets = docs.offsets
    for start, stop in scanner.blocks(offsets):
        if allowed is not None and not allowed[start:stop].any():
            continue
        a, b = int(offsets[start]), int(offsets[stop])
        yield start, stop, scanner.score(docs.codes[a:b], offsets[start:stop + 1] - a)


def _check_allowed(allowed: np.ndarray | None, n: int) -> np.ndarray | None:
    if allowed is None:
        return None
    allowed = np.asarray(allowed)
    if allowed.dtype != bool or allowed.shape != (n,):
        raise ValueError(f"allowed must be a boolean mask over the {n} documents, got {allowed.dtype} {allowed.shape}")
    return allowed


def maxsim(queries: TokenVectors | Sequence[np.ndarray], docs: TokenVectors | Sequence[np.ndarray],
           rows: np.ndarray | None = None, *, block_tokens: int | None = None) -> np.ndarray:
    """MaxSim of every query against every document (or the documents ``rows``, in that order):
    ``(n_queries, n_docs)`` float32. ``docs``: stored :class:`TokenVectors`, or token matrices
    (scored as given, in float32: what :meth:`~umr.models.multivector.MultiVectorEmbedder.score`
    passes). ``block_tokens``: document tokens per block (default: as many as keep the block's
    score matrix at :data:`SCORE_ELEMENTS`)."""
    if len(queries) == 0 or len(docs) == 0:
        return np.zeros((len(queries), len(docs) if rows is None else len(rows)), np.float32)
    queries = as_queries(queries)
    if not isinstance(docs, TokenVectors):
        docs = as_float32(docs)
    if rows is not None:
        docs = docs.take(rows)
    out = np.empty((len(queries), len(docs)), np.float32)
    for start, stop, scores in _scan(queries, docs, block_tokens):
        out[:, start:stop] = scores
    return out


class _TopK:
    """The best ``k`` (score, row) of each query over blocks pushed one after another."""

    def __init__(self, n_queries: int, k: int, pending_limit: int = 8192):
        self.k, self.pending_limit = k, max(pending_limit, 4 * k)
        self.scores = np.full((n_queries, 0), -np.inf, np.float32)
        self.rows = np.full((n_queries, 0), -1, np.int64)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_columns = 0

    def push(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """``scores`` ``(n_queries, m)`` of the rows ``rows`` (``(m,)`` shared, or per query)."""
        rows = np.broadcast_to(rows, scores.shape)
        self._pending.append((scores.copy(), rows))
        self._pending_columns += scores.shape[1]
        if self._pending_columns >= self.pending_limit:
            self._merge()

    def _merge(self) -> None:
        if not self._pending:
            return
        scores = np.concatenate([self.scores] + [s for s, _ in self._pending], axis=1)
        rows = np.concatenate([self.rows] + [r for _, r in self._pending], axis=1)
        self._pending, self._pending_columns = [], 0
        if scores.shape[1] > self.k:
            keep = np.argpartition(-scores, self.k - 1, axis=1)[:, :self.k]
            scores, rows = np.take_along_axis(scores, keep, 1), np.take_along_axis(rows, keep, 1)
        self.scores, self.rows = scores, rows

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` best first; where fewer than ``k`` rows scored, the tail is
        ``(-inf, -1)``."""
        self._merge()
        order = np.lexsort((self.rows, -self.scores), axis=1)  # ties: the lower row first
        scores, rows = np.take_along_axis(self.scores, order, 1), np.take_along_axis(self.rows, order, 1)
        missing = ~np.isfinite(scores)
        rows[missing] = -1
        pad = self.k - scores.shape[1]
        if pad > 0:
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            rows = np.pad(rows, ((0, 0), (0, pad)), constant_values=-1)
        return scores, rows


def maxsim_topk(queries: TokenVectors | Sequence[np.ndarray], docs: TokenVectors, k: int, *,
                allowed: np.ndarray | None = None, block_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` documents by MaxSim for every query: ``(scores, rows)`` of shape
    ``(n_queries, k)``, best first, ties to the lower row; ``allowed`` (a boolean mask over the
    documents: filters, deletes) leaves the others out. Missing places are ``(-inf, -1)``."""
    queries = as_queries(queries)
    allowed = _check_allowed(allowed, len(docs))
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = _TopK(len(queries), int(k))
    for start, stop, scores in _scan(queries, docs, block_tokens, allowed):
        if allowed is not None:
            scores[:, ~allowed[start:stop]] = -np.inf
        top.push(scores, np.arange(start, stop))
    return top.result()


def rerank(queries: TokenVectors | Sequence[np.ndarray], docs: TokenVectors, candidates: np.ndarray, k: int, *,
           block_tokens: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact MaxSim of each query against its own candidate rows (``(n_queries, depth)``, -1 for
    none; repeats are scored once), top ``k`` of them: ``(scores, rows)`` as :func:`maxsim_topk`."""
    queries = as_queries(queries)
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.ndim != 2 or len(candidates) != len(queries):
        raise ValueError(f"candidates must be (n_queries={len(queries)}, depth), got {candidates.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.full((len(queries), k), -np.inf, np.float32)
    rows = np.full((len(queries), k), -1, np.int64)
    for i, row_candidates in enumerate(candidates):
        chosen = np.unique(row_candidates[row_candidates >= 0])
        if len(chosen) == 0:
            continue
        top = _TopK(1, int(k))
        top.push(maxsim(queries.take([i]), docs, chosen, block_tokens=block_tokens), chosen[None])
        scores[i], rows[i] = (part[0] for part in top.result())
    return scores, rows
