"""A ragged collection of token vectors: every document's token matrix concatenated, plus offsets.

This is the layout the engine scans and a store segment can hold as two flat files (codes and
offsets), memory-mapped: document ``i`` owns code rows ``offsets[i]:offsets[i + 1]``. Blocks
of whole documents are contiguous, so exact MaxSim reads the codes front to back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .encoding import Float16Encoding, Float32Encoding, TokenEncoding

__all__ = ["TokenVectors", "as_float32", "as_queries"]


@dataclass(frozen=True)
class TokenVectors:
    """Documents (or queries) of ``lengths[i]`` token vectors each, stored as ``encoding`` codes."""

    #: ``(n_tokens, encoding.code_width)`` codes (may be a memory map)
    codes: np.ndarray
    #: ``(n + 1,)`` int64, ``offsets[0] == 0``, non-decreasing; document i is ``codes[offsets[i]:offsets[i+1]]``
    offsets: np.ndarray
    encoding: TokenEncoding

    def __post_init__(self) -> None:
        offsets = self.offsets
        if offsets.ndim != 1 or len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != len(self.codes):
            raise ValueError(f"offsets must run from 0 to the {len(self.codes)} code rows")
        if np.any(np.diff(offsets) < 1):
            raise ValueError(f"document {int(np.argmax(np.diff(offsets) < 1))} has no token vectors")
        if self.codes.ndim != 2 or self.codes.shape[1] != self.encoding.code_width or \
                self.codes.dtype != self.encoding.code_dtype:
            raise ValueError(f"codes must be ({len(self.codes)}, {self.encoding.code_width}) "
                             f"{self.encoding.code_dtype} for {self.encoding!r}, got {self.codes.shape} {self.codes.dtype}")

    @classmethod
    def from_arrays(cls, arrays: Sequence[np.ndarray], encoding: TokenEncoding | None = None) -> "TokenVectors":
        """One ``(n_i, dim)`` array per document (``n_i >= 1``), encoded (float16 by default)."""
        if len(arrays) == 0:
            raise ValueError("no token matrices given")
        arrays = [np.asarray(a, dtype=np.float32) for a in arrays]
        dim = arrays[0].shape[-1] if arrays[0].ndim == 2 else -1
        for i, a in enumerate(arrays):
            if a.ndim != 2 or a.shape[1] != dim:
                raise ValueError(f"document {i}: expected a ({'n'}, {dim}) token matrix, got shape {a.shape}")
            if len(a) == 0:
                raise ValueError(f"document {i} has no token vectors")
            if not np.isfinite(a).all():
                raise ValueError(f"document {i} has non-finite values")
        encoding = encoding or Float16Encoding(dim)
        if encoding.dim != dim:
            raise ValueError(f"the encoding is for {encoding.dim}-d vectors, the documents are {dim}-d")
        lengths = np.array([len(a) for a in arrays], np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(encoding.encode(np.concatenate(arrays)), offsets, encoding)

    @classmethod
    def from_padded(cls, padded: np.ndarray, mask: np.ndarray, encoding: TokenEncoding | None = None) -> "TokenVectors":
        """A model's padded batch ``(b, n, dim)`` with its attention mask ``(b, n)``: only the
        rows the mask keeps (padding rows, zero vectors in colpali-engine's output, are dropped)."""
        padded, mask = np.asarray(padded, dtype=np.float32), np.asarray(mask).astype(bool)
        if padded.ndim != 3 or mask.shape != padded.shape[:2]:
            raise ValueError(f"expected (b, n, dim) vectors and a (b, n) mask, got {padded.shape} and {mask.shape}")
        return cls.from_arrays([p[m] for p, m in zip(padded, mask)], encoding)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.encoding.dim

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def nbytes(self) -> int:
        """Bytes of the codes and offsets (what a store keeps per segment)."""
        return int(self.codes.nbytes + self.offsets.nbytes)

    def __getitem__(self, i: int) -> np.ndarray:
        """Document ``i``'s token vectors, decoded to float32."""
        return self.encoding.decode(self.codes[self.offsets[i]:self.offsets[i + 1]])

    def decoded(self) -> list[np.ndarray]:
        return [self[i] for i in range(len(self))]

    def take(self, rows: np.ndarray) -> "TokenVectors":
        """The documents ``rows`` (in that order, repeats allowed) as a new, contiguous collection."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) == 0:
            raise ValueError("no documents to take")
        if rows.min() < 0 or rows.max() >= len(self):
            raise IndexError(f"document rows must lie in [0, {len(self)})")
        starts, lengths = self.offsets[rows], self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return TokenVectors(self.codes[token_rows(starts, lengths, offsets)], offsets, self.encoding)


def token_rows(starts: np.ndarray, lengths: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """The code rows of documents starting at ``starts`` with ``lengths`` tokens, concatenated."""
    if offsets is None:
        offsets = np.concatenate([[0], np.cumsum(lengths)])
    return np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])


def as_float32(arrays: Sequence[np.ndarray]) -> TokenVectors:
    """Token matrices held exactly, as float32 codes."""
    arrays = list(arrays)
    dim = np.asarray(arrays[0]).shape[-1] if arrays else 0
    return TokenVectors.from_arrays(arrays, Float32Encoding(dim) if dim else None)


def as_queries(queries: "TokenVectors | Sequence[np.ndarray]") -> TokenVectors:
    """Query token matrices as a float32 collection (queries are scored exactly as given)."""
    if isinstance(queries, TokenVectors):
        if isinstance(queries.encoding, Float32Encoding):
            return queries
        return as_float32(queries.decoded())
    return as_float32(queries)
