"""Late-interaction (multi-vector) models in an evaluation: token vectors cached, exact MaxSim search.

A :class:`~umr.models.multivector.MultiVectorEmbedder` gives each item a ``(n_tokens, dim)``
matrix. :class:`TokenStore` caches them the way :class:`~umr.eval.cache.EmbeddingStore` caches
single vectors — the same fingerprints, failures (``errors.jsonl``), commits every N items or
seconds, lock and resume — by keeping the ragged token rows in one append-only file,
``tokens.f32`` beside that store's files, and letting the store hold, per item, where its rows
are: ``(first row, n_tokens)`` as two int64, i.e. a 4-float32 "vector" whose bits are those
integers. Token rows are appended (under the store's lock) before the store commits their
pointer, so a kill leaves at worst unreferenced rows at the tail, never a pointer to missing ones.

:func:`maxsim_search` ranks a pool by exact MaxSim (:func:`umr.index.multivector.maxsim_topk`,
float32), reading the candidates' tokens a block at a time, so memory holds one block, not the pool.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Iterator, Sequence

import numpy as np

from ..core.atomic import write_text_atomic
from ..core.items import Item, ItemError
from ..core.results import EmbedResult
from ..index.multivector import Float32Encoding, TokenVectors, maxsim_topk
from ..models.multivector import MultiVectorEmbedder
from .cache import EmbeddingStore

#: bytes of candidate token vectors read and scored at a time
BLOCK_BYTES = 64 << 20


def spans_of(pointers: np.ndarray) -> np.ndarray:
    """The store's 4-float32 pointer rows as ``(n, 2)`` int64 ``(first row, n_tokens)``."""
    return np.ascontiguousarray(pointers, dtype=np.float32).view(np.int64).reshape(-1, 2)


class TokenStore:
    """Token vectors of one late-interaction model, kept beside ``store`` (its pointers)."""

    def __init__(self, store: EmbeddingStore):
        self.store = store
        self.path = store.dir / "tokens.f32"
        self._meta = store.dir / "tokens.json"
        self.dim: int | None = json.loads(self._meta.read_text())["dim"] if self._meta.is_file() else None

    def embed(self, model: MultiVectorEmbedder, items: Sequence[Item], *, batch_size: int | None = None,
              show_progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, str], float]:
        """``(spans, kept positions, errors by position, seconds embedding)`` of ``items``: each
        kept item's ``(first row, n_tokens)`` in ``tokens.f32``; what is not cached is embedded."""
        pointers, kept, errors, spent = self.store.embed(_TokenWriter(model, self), items, batch_size=batch_size,
                                                         show_progress_bar=show_progress_bar, name=model.name)
        return spans_of(pointers), kept, errors, spent

    def append(self, vectors: list[np.ndarray]) -> np.ndarray:
        """Append token matrices (called under the store's lock); their ``(first row, n_tokens)``."""
        if not vectors:
            return np.zeros((0, 2), np.int64)
        dim = int(vectors[0].shape[1])
        if self.dim is None:
            self.dim = dim
            write_text_atomic(self._meta, json.dumps({"dim": dim}))
        if dim != self.dim:
            raise ValueError(f"token vectors of {dim} dimensions in a cache of {self.dim}-d ones")
        row_bytes = 4 * dim
        with self.path.open("ab") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size % row_bytes:  # a row torn by a kill, never referenced: cut off
                handle.truncate(size - size % row_bytes)
                size -= size % row_bytes
            lengths = np.array([len(v) for v in vectors], np.int64)
            starts = size // row_bytes + np.concatenate([[0], np.cumsum(lengths)[:-1]])
            handle.write(np.concatenate([np.asarray(v, np.float32) for v in vectors]).tobytes())
        return np.stack([starts, lengths], axis=1)

    def read(self, spans: np.ndarray) -> list[np.ndarray]:
        """The token matrices at ``spans`` (one read each, in file order)."""
        if not len(spans):  # nothing embedded (maybe not even the file)
            return []
        out: list[np.ndarray] = [np.empty((0, self.dim), np.float32)] * len(spans)
        with self.path.open("rb") as handle:
            for i in np.argsort(spans[:, 0], kind="stable"):
                start, n = (int(x) for x in spans[i])
                handle.seek(start * 4 * self.dim)
                out[i] = np.fromfile(handle, np.float32, count=n * self.dim).reshape(n, self.dim)
        return out

    def blocks(self, spans: np.ndarray, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, TokenVectors]]:
        """``(first position, tokens)`` of consecutive runs of ``spans`` holding about ``block_bytes``."""
        per_block = max(1, block_bytes // (4 * (self.dim or 1)))
        start = 0
        while start < len(spans):
            stop, tokens = start + 1, int(spans[start, 1])
            while stop < len(spans) and tokens + spans[stop, 1] <= per_block:
                tokens += int(spans[stop, 1])
                stop += 1
            yield start, TokenVectors.from_arrays(self.read(spans[start:stop]), Float32Encoding(self.dim))
            start = stop


class _TokenWriter:
    """A :class:`~umr.index.embedding.ChunkEmbedder` for the store: the model's token matrices go
    to ``tokens.f32``, and their pointers come back as the chunk's "vectors"."""

    def __init__(self, model: MultiVectorEmbedder, tokens: TokenStore):
        self.model, self.tokens = model, tokens

    def map(self, chunks: Iterable[Sequence[Item]], *, batch_size: int | None = None) -> Iterator[EmbedResult]:
        for items in chunks:
            items = list(items)
            result = self.model.embed(items, batch_size=batch_size, show_progress_bar=False, on_error="skip")
            # a matrix MaxSim cannot score (no tokens, NaN) is that item's error, not the run's
            good = [j for j, v in enumerate(result.vectors) if len(v) and np.isfinite(v).all()]
            bad = sorted(set(range(len(result.vectors))) - set(good))
            errors = result.errors + [ItemError(items[result.indices[j]].id, "the model gave no token vectors"
                                                if not len(result.vectors[j]) else
                                                "the model gave non-finite token vectors", index=int(result.indices[j]))
                                      for j in bad]
            pointers = self.tokens.append([result.vectors[j] for j in good]).view(np.float32)
            yield EmbedResult(pointers.reshape(-1, 4), result.indices[good],
                              sorted(errors, key=lambda err: err.index))


def maxsim_search(queries: list[np.ndarray], tokens: TokenStore, spans: np.ndarray, k: int,
                  block_bytes: int = BLOCK_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by MaxSim of every query over the candidates at ``spans``: ``(scores,
    rows)`` ``(n_queries, min(k, n))``, best first, rows indexing ``spans``."""
    k = min(int(k), len(spans))
    if k <= 0 or not queries:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_rows = np.zeros((len(queries), 0), np.int64)
    for first, docs in tokens.blocks(spans, block_bytes):
        scores, rows = maxsim_topk(queries, docs, min(k, len(docs)))
        scores = np.concatenate([best_scores, scores], axis=1)
        rows = np.concatenate([best_rows, rows + first], axis=1)
        order = np.lexsort((rows, -scores), axis=1)[:, :k]  # ties: the lower row, as maxsim_topk
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return best_scores, best_rows
