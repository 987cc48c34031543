"""MUVERA fixed-dimensional encodings (Dhulipala et al., 2024, "MUVERA: Multi-Vector Retrieval
via Fixed Dimensional Encodings"): one vector per token set whose inner products approximate
Chamfer (MaxSim) similarity, so that a single-vector index can pick MaxSim candidates.

Per repetition ``r`` (of ``repetitions``), written from the paper's definition:

* ``k_sim`` Gaussian hyperplanes (SimHash) split the space into ``B = 2^k_sim`` buckets; a token
  falls in the bucket whose index is its sign pattern (bit ``i`` set where ``<g_i, x> > 0``).
* Each token is projected to ``d_proj`` dimensions by ``ψ(x) = S x / sqrt(d_proj)`` with
  ``S`` uniform ±1 (``d_proj=None``: no projection).
* A *query* block ``b`` is the **sum** of its tokens in bucket ``b``; a *document* block is their
  **mean**, and an empty document bucket takes the token nearest to it in Hamming distance of
  sign patterns (``fill_empty``; ties: the first token), so that every query token meets
  something close to its best match.

The blocks of all repetitions are concatenated: ``repetitions * B * d_proj`` dimensions, and
``<FDE(Q), FDE(D)> / repetitions`` estimates Chamfer(Q, D). An optional final projection
(``final_dim``) count-sketches the result down (each coordinate added to one random output
coordinate with a random sign, unbiased for inner products). All randomness comes from ``seed``;
:meth:`Muvera.arrays` gives the drawn matrices, which a store should persist rather than the
seed alone (numpy does not promise the same draws across versions).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ...core.multivector.tokens import TokenVectors, as_float32, as_queries

__all__ = ["Muvera"]

#: document tokens encoded per batch (bounds the temporary (tokens, buckets) matrices)
BATCH_TOKENS = 1 << 16


class Muvera:
    """Fixed-dimensional encodings of token sets, for queries (:meth:`encode_queries`) and
    documents (:meth:`encode_documents`)."""

    def __init__(self, dim: int, *, k_sim: int = 5, d_proj: int | None = 16, repetitions: int = 20,
                 final_dim: int | None = None, fill_empty: bool = True, seed: int = 0):
        if not 0 <= k_sim <= 16:
            raise ValueError(f"k_sim must lie in [0, 16], got {k_sim}")
        if repetitions < 1 or dim < 1 or (d_proj is not None and d_proj < 1) or (final_dim is not None and final_dim < 1):
            raise ValueError("dim, repetitions, d_proj and final_dim must be >= 1")
        self.dim, self.k_sim, self.repetitions = int(dim), int(k_sim), int(repetitions)
        self.d_proj, self.final_dim, self.fill_empty, self.seed = d_proj, final_dim, bool(fill_empty), int(seed)
        rng = np.random.default_rng(seed)
        self.simhash = rng.standard_normal((repetitions, dim, k_sim)).astype(np.float32)
        self.projection = None if d_proj is None else \
            ((2.0 * rng.integers(0, 2, (repetitions, dim, d_proj)) - 1.0) / np.sqrt(d_proj)).astype(np.float32)
        self.final_index = self.final_sign = None
        if final_dim is not None:
            self.final_index = rng.integers(0, final_dim, self.blocks_dim)
            self.final_sign = (2.0 * rng.integers(0, 2, self.blocks_dim) - 1.0).astype(np.float32)

    @property
    def buckets(self) -> int:
        return 1 << self.k_sim

    @property
    def blocks_dim(self) -> int:
        """Dimensions before the final projection: ``repetitions * 2^k_sim * d_proj``."""
        return self.repetitions * self.buckets * (self.d_proj or self.dim)

    @property
    def fde_dim(self) -> int:
        return self.final_dim or self.blocks_dim

    def params(self) -> dict[str, Any]:
        return {"dim": self.dim, "k_sim": self.k_sim, "d_proj": self.d_proj, "repetitions": self.repetitions,
                "final_dim": self.final_dim, "fill_empty": self.fill_empty, "seed": self.seed}

    def arrays(self) -> dict[str, np.ndarray]:
        """The random draws: with :meth:`params`, everything :meth:`from_arrays` needs."""
        drawn = {"simhash": self.simhash}
        if self.projection is not None:
            drawn["projection"] = self.projection
        if self.final_index is not None:
            drawn.update(final_index=self.final_index, final_sign=self.final_sign)
        return drawn

    @classmethod
    def from_arrays(cls, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> "Muvera":
        encoder = cls(**params)
        for name, value in arrays.items():
            current = getattr(encoder, name)
            if current is None or current.shape != np.shape(value):
                raise ValueError(f"MUVERA array {name!r} does not fit the parameters {params}")
            setattr(encoder, name, np.asarray(value, dtype=current.dtype))
        return encoder

    def encode_queries(self, queries: TokenVectors | Sequence[np.ndarray]) -> np.ndarray:
        """``(n, fde_dim)`` float32: per bucket, the sum of the query's projected tokens."""
        queries = as_queries(queries)
        return self._encode(queries.codes, queries.offsets, document=False)

    def encode_documents(self, docs: TokenVectors | Sequence[np.ndarray]) -> np.ndarray:
        """``(n, fde_dim)`` float32: per bucket, the mean of the document's projected tokens
        (empty buckets filled, see the module docstring). Decoded a batch of documents at a time."""
        if not isinstance(docs, TokenVectors):
            docs = as_float32(docs)
        out = np.empty((len(docs), self.fde_dim), np.float32)
        offsets, start = docs.offsets, 0
        while start < len(docs):
            stop = int(np.searchsorted(offsets, offsets[start] + BATCH_TOKENS, side="right")) - 1
            stop = min(max(stop, start + 1), len(docs))
            a, b = int(offsets[start]), int(offsets[stop])
            out[start:stop] = self._encode(docs.encoding.decode(docs.codes[a:b]), offsets[start:stop + 1] - a,
                                           document=True)
            start = stop
        return out

    def _encode(self, tokens: np.ndarray, offsets: np.ndarray, *, document: bool) -> np.ndarray:
        if tokens.shape[1] != self.dim:
            raise ValueError(f"this encoder takes {self.dim}-d tokens, got {tokens.shape[1]}-d")
        n_sets, lengths = len(offsets) - 1, np.diff(offsets)
        owner = np.repeat(np.arange(n_sets), lengths)
        width = self.d_proj or self.dim
        blocks = np.empty((n_sets, self.repetitions, self.buckets, width), np.float32)
        weights = 1 << np.arange(self.k_sim - 1, -1, -1)
        for r in range(self.repetitions):
            bits = (tokens @ self.simhash[r]) > 0
            bucket = bits.astype(np.int64) @ weights if self.k_sim else np.zeros(len(tokens), np.int64)
            projected = tokens @ self.projection[r] if self.projection is not None else tokens
            slot = owner * self.buckets + bucket
            sums = torch.zeros((n_sets * self.buckets, width)).index_add_(0, torch.from_numpy(slot),
                                                                          torch.from_numpy(np.ascontiguousarray(projected)))
            block = sums.numpy().reshape(n_sets, self.buckets, width)
            if document:
                counts = np.bincount(slot, minlength=n_sets * self.buckets).reshape(n_sets, self.buckets)
                block /= np.maximum(counts, 1)[:, :, None]
                if self.fill_empty and self.k_sim:
                    empty = counts == 0
                    if empty.any():
                        nearest = _nearest_token(bucket, offsets, self.k_sim)
                        block[empty] = projected[nearest[empty]]
            blocks[:, r] = block
        flat = blocks.reshape(n_sets, -1)
        if self.final_index is None:
            return flat
        out = torch.zeros((n_sets, self.final_dim))
        out.index_add_(1, torch.from_numpy(self.final_index), torch.from_numpy(flat * self.final_sign))
        return out.numpy()


def _nearest_token(bucket: np.ndarray, offsets: np.ndarray, k_sim: int) -> np.ndarray:
    """``(n_sets, 2^k_sim)``: per set and bucket, the (global) row of the set's token whose sign
    pattern is nearest to the bucket's in Hamming distance, the first such token on ties."""
    patterns = np.arange(1 << k_sim)
    differing = np.bitwise_xor(bucket[:, None], patterns[None, :])
    hamming = np.unpackbits(differing.astype(">u2").view(np.uint8).reshape(len(bucket), -1, 2), axis=2).sum(axis=2)
    # hamming * n + row orders by distance, then by row: a segment min finds the first nearest token
    n = len(bucket)
    key = hamming.astype(np.int64) * n + np.arange(n)[:, None]
    return np.minimum.reduceat(key, offsets[:-1], axis=0) % n
