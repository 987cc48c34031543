"""How token vectors are stored: float32, float16, int8 or sign bits, each decoded to float32 to score.

Scoring never materialises the decoded vectors of a whole collection: an encoding *folds* what
its decoding does per dimension (int8's step and offset, the sign bits' scale) into the query
side once per search, so that a block of stored codes needs only a widening cast (or a table
lookup for bits) before the float32 matrix product. The invariant every encoding keeps, and the
tests check: ``fold(q)[0] @ widen(codes).T + fold(q)[1] == q @ decode(codes).T``.

The int8 codes and the sign bits are :mod:`umr.core.quantize`'s, the codec the single-vector
index and the HTTP API share, byte for byte: int8 is an :class:`~umr.core.quantize.Int8Codec`
(per dimension, :class:`~umr.core.quantize.PerDimensionInt8`, calibrated on the first commit's
tokens; or :class:`~umr.core.quantize.SymmetricInt8`, one scale), ``u = clip(rint((x - lo) /
step), 0, 255)``, ``code = u - 128``; the bits are :func:`~umr.core.quantize.sign_bits` (bit 1
where ``x >= 0``, MSB first). What this module adds is how codes are *scored*: asymmetrically (a
float32 query against decoded codes), which is why per-dimension offsets are harmless here while
they ruin code-against-code dot products, and the sign bits decode to ``±scale`` per dimension.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from ..quantize import Int8Codec, PerDimensionInt8, SymmetricInt8, sign_bits

__all__ = ["BinaryEncoding", "Float16Encoding", "Float32Encoding", "Int8Encoding", "TokenEncoding",
           "encoding_from_state"]


class TokenEncoding(ABC):
    """One way of storing ``dim``-dimensional token vectors as fixed-width rows of codes."""

    #: the name stored with an index (``encoding_from_state`` reads it back)
    name: ClassVar[str]
    #: numpy dtype of the stored codes
    code_dtype: ClassVar[np.dtype]

    def __init__(self, dim: int):
        if int(dim) < 1:
            raise ValueError(f"token vectors need a dimension >= 1, got {dim}")
        self.dim = int(dim)

    @property
    def code_width(self) -> int:
        """Codes per token (columns of the stored matrix)."""
        return self.dim

    @property
    def bytes_per_token(self) -> int:
        return self.code_width * np.dtype(self.code_dtype).itemsize

    @property
    def block_width(self) -> int:
        """Columns of a widened block (and of a folded query): ``dim`` unless bits pad it."""
        return self.dim

    @abstractmethod
    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """``(n, dim)`` float vectors to ``(n, code_width)`` codes."""

    @abstractmethod
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """``(n, code_width)`` codes to the ``(n, dim)`` float32 vectors they stand for."""

    def fold(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Float32 query tokens ``(m, dim)`` as ``(q, bias)``: scores against stored codes are
        ``q @ widen(codes).T + bias[:, None]`` (``bias`` None: nothing to add)."""
        return queries, None

    def widen(self, codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """A block of codes as float32 ``(n, block_width)``, written into ``out`` (a reused
        buffer: a fresh allocation per block costs more in page faults than the cast itself)."""
        return out.copy_(codes)

    def state(self) -> dict[str, Any]:
        """What must be stored to decode the codes again (JSON-ready)."""
        return {"name": self.name, "dim": self.dim}

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected token vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim})"


class Float32Encoding(TokenEncoding):
    """Exact: the reference the others are measured against, and how queries are held."""

    name = "float32"
    code_dtype = np.dtype(np.float32)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self._check(vectors))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.float32)

    def widen(self, codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return codes  # already float32: no copy


class Float16Encoding(TokenEncoding):
    """Half the bytes of float32 at a relative rounding error of 2^-11 per value: the default."""

    name = "float16"
    code_dtype = np.dtype(np.float16)

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        vectors = self._check(vectors)
        if np.abs(vectors).max(initial=0.0) > np.finfo(np.float16).max:
            raise ValueError("token vectors beyond float16's range (65504): normalise them or store float32")
        return vectors.astype(np.float16)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, dtype=np.float32)


class Int8Encoding(TokenEncoding):
    """One byte per value: an :class:`~umr.core.quantize.Int8Codec`'s codes, ``decode = lo + (code
    + 128) * step`` with per-dimension ``lo``/``step``."""

    name = "int8"
    code_dtype = np.dtype(np.int8)

    def __init__(self, codec: Int8Codec):
        super().__init__(codec.dim)
        self.codec = codec

    @classmethod
    def fit(cls, sample: np.ndarray, *, symmetric: bool = False) -> "Int8Encoding":
        """Calibrated on a sample of token vectors: per dimension, ``[min, max]`` over 255 steps
        (:class:`~umr.core.quantize.PerDimensionInt8`); ``symmetric``: one scale ``a = max |x|``,
        ``code = rint(127 x / a)`` (:class:`~umr.core.quantize.SymmetricInt8`, the API's int8)."""
        return cls((SymmetricInt8 if symmetric else PerDimensionInt8).fit(np.asarray(sample, np.float32)))

    @property
    def step(self) -> np.ndarray:
        return self.codec.step

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        """Codes; a value beyond the calibrated range is clipped to the nearest end of it."""
        return self.codec.encode(self._check(vectors)).codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.codec.decode(codes)

    @property
    def _offset(self) -> np.ndarray:
        return self.codec.lo + 128.0 * self.codec.step  # the value of code 0

    def fold(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return queries * torch.from_numpy(self.codec.step), queries @ torch.from_numpy(self._offset)

    def state(self) -> dict[str, Any]:
        return {**super().state(), "codec": self.codec.to_json()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Int8Encoding":
        """The codec recorded; an index written before int8 tokens used :mod:`umr.core.quantize`
        recorded ``lo`` and ``step`` instead: read as the per-dimension codec of the same range
        (``hi = lo + 255 step``; its step equals the recorded one to float32 rounding)."""
        if "codec" in state:
            return cls(Int8Codec.from_json(state["codec"]))
        lo, step = np.array(state["lo"], np.float32), np.array(state["step"], np.float32)
        return cls(PerDimensionInt8(lo, lo + np.float32(255) * step, rows=0))


class BinaryEncoding(TokenEncoding):
    """One bit per value (its sign), decoded as ``±scale`` per dimension.

    ``scale`` defaults to ``1/sqrt(dim)`` (unit-norm decoded vectors); :meth:`fit` sets it to the
    mean ``|x|`` of each dimension, the least-squares scale of a sign code."""

    name = "binary"
    code_dtype = np.dtype(np.uint8)

    def __init__(self, dim: int, scale: np.ndarray | None = None):
        super().__init__(dim)
        scale = np.full(self.dim, 1.0 / np.sqrt(self.dim), np.float32) if scale is None else \
            np.asarray(scale, dtype=np.float32).reshape(-1)
        if scale.shape != (self.dim,) or not np.all(scale > 0):
            raise ValueError(f"binary encoding needs {self.dim} positive scales")
        self.scale = scale
        # byte value -> its 8 bits as -1/+1, MSB first (the order np.packbits writes)
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32)
        self._signs = torch.from_numpy(2.0 * bits - 1.0)

    @classmethod
    def fit(cls, sample: np.ndarray) -> "BinaryEncoding":
        sample = np.asarray(sample, dtype=np.float32)
        if sample.ndim != 2 or len(sample) == 0 or not np.isfinite(sample).all():
            raise ValueError("binary calibration needs a non-empty, finite (n, dim) sample")
        scale = np.abs(sample).mean(axis=0)
        return cls(sample.shape[1], np.where(scale > 0, scale, 1.0 / np.sqrt(sample.shape[1])))

    @property
    def code_width(self) -> int:
        return (self.dim + 7) // 8

    @property
    def block_width(self) -> int:
        return 8 * self.code_width

    def encode(self, vectors: np.ndarray) -> np.ndarray:
        return sign_bits(self._check(vectors))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(np.asarray(codes, dtype=np.uint8), axis=1, count=self.dim)
        return (2.0 * bits.astype(np.float32) - 1.0) * self.scale

    def fold(self, queries: torch.Tensor) -> tuple[torch.Tensor, None]:
        folded = queries * torch.from_numpy(self.scale)
        pad = self.block_width - self.dim  # the padding bits meet zero query weights
        return (torch.nn.functional.pad(folded, (0, pad)) if pad else folded), None

    def widen(self, codes: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        flat = out.view(codes.shape[0], self.code_width, 8)
        torch.index_select(self._signs, 0, codes.reshape(-1).to(torch.int32), out=flat.view(-1, 8))
        return out

    def state(self) -> dict[str, Any]:
        return {**super().state(), "scale": self.scale.tolist()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "BinaryEncoding":
        return cls(int(state["dim"]), np.array(state["scale"], np.float32))


_ENCODINGS: dict[str, type[TokenEncoding]] = {e.name: e for e in (Float32Encoding, Float16Encoding, Int8Encoding,
                                                                   BinaryEncoding)}


def encoding_from_state(state: dict[str, Any]) -> TokenEncoding:
    """The encoding a :meth:`TokenEncoding.state` describes."""
    kind = _ENCODINGS.get(state.get("name", ""))
    if kind is None:
        raise ValueError(f"unknown token encoding {state.get('name')!r}: expected one of {', '.join(_ENCODINGS)}")
    if kind in (Int8Encoding, BinaryEncoding):
        return kind.from_state(state)
    return kind(int(state["dim"]))
