"""Compact vector codes: int8/uint8, sign bits, base64 floats (numpy only).

One codec for both users of compact vectors, so that the index and the HTTP API agree byte for
byte: the embedded index keeps int8 codes or sign bits in memory instead of float32 rows
(searching and rescoring them lives in :mod:`umr.index.quantized`), and the API answers
Cohere's ``embedding_types`` (float, int8, uint8, binary, ubinary, base64) and OpenAI's
``encoding_format=base64``.

Definitions (Cohere's and vLLM's, see each function):

* **int8 / uint8**: an affine 8-bit code per value, level ``u = clip(rint((x - lo) / step), 0,
  255)``, ``int8 = u - 128``, ``uint8 = u``, decoded as ``lo + u * step``. Two calibrations of
  ``lo`` and ``step`` (:class:`PerDimensionInt8` for the index, :class:`SymmetricInt8` for the
  API); values beyond the calibrated range are clipped and counted (:class:`Encoded`).
* **ubinary**: the sign bits, bit 1 where ``x >= 0``, packed most significant bit first, 8
  dimensions a byte (the last byte zero-padded); **binary** is the same bytes minus 128 as int8.
* **base64**: each vector's float32 little-endian bytes, base64-encoded.

Matryoshka models: truncate and renormalise first (``umr.models.matryoshka.renormalised_prefix``),
then fit and encode the shorter vectors; every codec here works at any width.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

import numpy as np

#: Cohere's embedding types, in the order its API lists them
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
#: rows encoded, decoded or scored per step: bounds the float32 copies a step makes (~24 MB at d=384)
BLOCK_ROWS = 16_384
#: the share of clipped values, since the last calibration, above which an index should re-fit
RECALIBRATE_CLIPPED_SHARE = 1e-3

# -- int8 / uint8 ----------------------------------------------------------------------------------


class Encoded(NamedTuple):
    """Codes and how many values did not fit: each was clipped to -128 or 127."""

    codes: np.ndarray
    clipped: int


class Int8Codec(ABC):
    """An affine 8-bit code per dimension: level ``u = clip(rint((x - lo) / step), 0, 255)``,
    code ``u - 128``, value ``lo + u * step``.

    Subclasses differ only in how they are fitted (their calibration) and how they record it;
    encoding, decoding and clipping are one rule for both. A value is *clipped* when its level
    falls outside 0..255 before clipping: beyond the calibrated range by more than half a step.
    """

    #: the name recorded in :meth:`to_json`
    kind: ClassVar[str]
    _kinds: ClassVar[dict[str, type[Int8Codec]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Int8Codec._kinds[cls.kind] = cls

    def __init__(self, lo: np.ndarray, step: np.ndarray, rows: int) -> None:
        self.lo = np.ascontiguousarray(lo, np.float32)
        self.step = np.ascontiguousarray(step, np.float32)
        #: how many vectors the calibration saw
        self.rows = int(rows)
        if self.lo.ndim != 1 or self.lo.shape != self.step.shape or not (self.step > 0).all():
            raise ValueError("an int8 codec needs one offset and one positive step per dimension")

    @property
    def dim(self) -> int:
        return len(self.lo)

    @classmethod
    @abstractmethod
    def fit(cls, vectors: np.ndarray) -> Int8Codec:
        """The codec calibrated on ``vectors`` (n, dim); any array, a memory map too (read in blocks)."""

    def encode(self, vectors: np.ndarray) -> Encoded:
        """int8 codes of ``vectors`` (n, dim), read and encoded a block at a time."""
        x = _rows(vectors, self.dim)
        codes = np.empty(x.shape, np.int8)
        clipped = 0
        for start in range(0, len(x), BLOCK_ROWS):
            block = np.asarray(x[start:start + BLOCK_ROWS], np.float32)
            if not np.isfinite(block).all():
                raise ValueError("cannot quantise vectors that hold NaN or infinite values")
            level = np.rint((block - self.lo) / self.step)
            clipped += int(np.count_nonzero((level < 0) | (level > 255)))
            codes[start:start + len(block)] = signed(np.clip(level, 0, 255).astype(np.uint8))
        return Encoded(codes, clipped)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """The float32 values that int8 ``codes`` stand for (within half a step of the originals)."""
        return self.lo + unsigned(np.asarray(codes, np.int8)).astype(np.float32) * self.step

    def to_json(self) -> dict[str, Any]:
        """The calibration as JSON values (float32 values survive the round trip exactly)."""
        return {"kind": self.kind, "rows": self.rows, **self._params()}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Int8Codec:
        """The codec :meth:`to_json` recorded, of whichever kind it names."""
        kind = doc.get("kind")
        if kind not in cls._kinds:
            raise ValueError(f"unknown int8 calibration kind {kind!r}: expected one of {', '.join(cls._kinds)}")
        return cls._kinds[kind]._from_params(doc)

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...

    @classmethod
    @abstractmethod
    def _from_params(cls, doc: dict[str, Any]) -> Int8Codec: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, rows={self.rows})"


class PerDimensionInt8(Int8Codec):
    """The index's codec: each dimension's own range ``[min, max]`` over the calibration rows,
    cut into 256 levels.

    Scored asymmetrically (a float32 query against decoded rows) it keeps recall@10 at 0.995 on
    real minilm vectors; min/max rather than percentiles, because clipping outliers costs more
    recall than the finer steps gain. Rows added after calibration may fall outside the range:
    their values are clipped and counted, and :func:`recalibration_due` says when to re-fit.
    Its codes carry a per-dimension offset, so dot products *between codes* rank poorly (0.79):
    that is why the API uses :class:`SymmetricInt8` instead.
    """

    kind = "per-dimension"

    def __init__(self, lo: np.ndarray, hi: np.ndarray, rows: int) -> None:
        lo = np.asarray(lo, np.float32)
        self.hi = np.ascontiguousarray(hi, np.float32)
        # a dimension constant over the calibration rows gets the smallest step: its value is
        # coded exactly, and any other value is clipped (and counted)
        super().__init__(lo, np.maximum((self.hi - lo) / np.float32(255), np.float32(1e-12)), rows)

    @classmethod
    def fit(cls, vectors: np.ndarray) -> PerDimensionInt8:
        x = _rows(vectors)
        if len(x) < 2:
            raise ValueError(f"a per-dimension int8 calibration needs at least 2 vectors, got {len(x)}")
        lo = np.full(x.shape[1], np.inf, np.float32)
        hi = np.full(x.shape[1], -np.inf, np.float32)
        for start in range(0, len(x), BLOCK_ROWS):
            block = np.asarray(x[start:start + BLOCK_ROWS], np.float32)
            np.minimum(lo, block.min(axis=0), out=lo)
            np.maximum(hi, block.max(axis=0), out=hi)
        if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
            raise ValueError("cannot calibrate int8 codes on vectors that hold NaN or infinite values")
        return cls(lo, hi, len(x))

    def _params(self) -> dict[str, Any]:
        return {"lo": self.lo.tolist(), "hi": self.hi.tolist()}

    @classmethod
    def _from_params(cls, doc: dict[str, Any]) -> PerDimensionInt8:
        return cls(np.array(doc["lo"], np.float32), np.array(doc["hi"], np.float32), doc["rows"])


class SymmetricInt8(Int8Codec):
    """The API's codec: ``int8 = clip(rint(127 * x / a), -128, 127)`` with one scale ``a``, the
    largest ``|x|`` over a sample of the model's own embeddings.

    Its codes are the floats scaled, so they point the same way (cosine 0.9999 on minilm) and
    dot products between codes rank like the floats (recall@10 0.990): what a user who stores
    Cohere-style int8 vectors in another database will do with them. ``a`` is fitted per model and
    output dimension; 256 calibration vectors suffice. ``uint8`` is the same level plus 128.
    """

    kind = "symmetric"

    def __init__(self, absmax: float, dim: int, rows: int) -> None:
        if not absmax > 0:
            raise ValueError(f"a symmetric int8 scale needs a positive largest value, got {absmax}")
        #: ``a``: the value coded as 127
        self.absmax = float(np.float32(absmax))
        step = np.full(dim, np.float32(self.absmax) / np.float32(127), np.float32)
        super().__init__(-128 * step, step, rows)

    @classmethod
    def fit(cls, vectors: np.ndarray) -> SymmetricInt8:
        x = _rows(vectors)
        if len(x) == 0:
            raise ValueError("a symmetric int8 calibration needs at least 1 vector")
        absmax = max(float(np.abs(np.asarray(x[s:s + BLOCK_ROWS], np.float32)).max())
                     for s in range(0, len(x), BLOCK_ROWS))
        if not np.isfinite(absmax):
            raise ValueError("cannot calibrate int8 codes on vectors that hold NaN or infinite values")
        return cls(absmax, x.shape[1], len(x))

    def _params(self) -> dict[str, Any]:
        return {"absmax": self.absmax, "dim": self.dim}

    @classmethod
    def _from_params(cls, doc: dict[str, Any]) -> SymmetricInt8:
        return cls(doc["absmax"], doc["dim"], doc["rows"])


def signed(levels: np.ndarray) -> np.ndarray:
    """uint8 levels (0..255) as int8 codes (-128..127): ``level - 128``, not a reinterpretation
    of the byte (Cohere's ``binary`` from ``ubinary``, ``int8`` from ``uint8``)."""
    return (np.asarray(levels, np.uint8) ^ np.uint8(0x80)).view(np.int8)


def unsigned(codes: np.ndarray) -> np.ndarray:
    """int8 codes (-128..127) as uint8 levels (0..255): ``code + 128``."""
    return np.asarray(codes, np.int8).view(np.uint8) ^ np.uint8(0x80)


def recalibration_due(*, clipped: int, encoded: int, rows: int, calibrated_rows: int,
                      max_share: float = RECALIBRATE_CLIPPED_SHARE) -> bool:
    """Whether an index should re-fit its :class:`PerDimensionInt8` and re-encode from the float
    rows it keeps: more than ``max_share`` of the values ``encoded`` since the calibration were
    clipped, *and* the rows have at least doubled since (so re-encoding stays amortised O(n))."""
    return encoded > 0 and clipped > max_share * encoded and rows >= 2 * calibrated_rows


# -- sign bits --------------------------------------------------------------------------------------


def sign_bits(vectors: np.ndarray) -> np.ndarray:
    """Cohere's ``ubinary``: bit 1 where ``x >= 0``, most significant bit first, (n, ceil(d/8)) uint8.

    ``>= 0`` as vLLM's Cohere endpoint does (so both servers give the same bytes);
    sentence-transformers' ``quantize_embeddings`` uses ``> 0``. They differ only on exact zeros,
    which ``>= 0`` counts as positive (as the ``2 * bit - 1`` decoding in Cohere's docs reads them).
    """
    return np.packbits(np.asarray(vectors) >= 0, axis=-1)


# -- base64 and the API's embedding types ---------------------------------------------------------


def to_base64(vectors: np.ndarray) -> list[str]:
    """Each vector's float32 little-endian bytes, base64-encoded (Cohere's ``base64`` type and
    OpenAI's ``encoding_format=base64``)."""
    x = np.ascontiguousarray(np.atleast_2d(vectors), "<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in x]


def from_base64(text: str) -> np.ndarray:
    """The float32 vector :func:`to_base64` encoded."""
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"base64 vector of {len(raw)} bytes is not a whole number of float32 values")
    return np.frombuffer(raw, "<f4").astype(np.float32)


def embedding_types(vectors: np.ndarray, types: Iterable[str], *,
                    int8: Int8Codec | None = None) -> dict[str, list]:
    """Each requested Cohere embedding type of ``vectors``, as JSON-ready lists (``/v2/embed``'s
    ``embeddings`` object). int8 and uint8 need the model's codec (a :class:`SymmetricInt8`)."""
    types = list(dict.fromkeys(types))
    unknown = [t for t in types if t not in EMBEDDING_TYPES]
    if unknown:
        raise ValueError(f"unknown embedding type(s) {', '.join(map(repr, unknown))}: "
                         f"choose from {', '.join(EMBEDDING_TYPES)}")
    x = np.asarray(vectors, np.float32)
    out: dict[str, list] = {}
    codes = None
    if {"int8", "uint8"} & set(types):
        if int8 is None:
            raise ValueError("int8 and uint8 embeddings need an int8 codec calibrated for the model")
        codes = int8.encode(x).codes
    bits = sign_bits(x) if {"binary", "ubinary"} & set(types) else None
    for kind in types:
        if kind == "float":
            out[kind] = x.tolist()
        elif kind == "int8":
            out[kind] = codes.tolist()
        elif kind == "uint8":
            out[kind] = unsigned(codes).tolist()
        elif kind == "ubinary":
            out[kind] = bits.tolist()
        elif kind == "binary":
            out[kind] = signed(bits).tolist()
        else:
            out[kind] = to_base64(x)
    return out


# -- shared pieces ----------------------------------------------------------------------------------
def _rows(vectors: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``vectors`` as a 2-D array (left as it is: a memory map stays one), checked for width."""
    x = vectors if isinstance(vectors, np.ndarray) else np.asarray(vectors, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected vectors of shape (n, dim), got {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"vectors have {x.shape[1]} dimensions, the codec {dim}")
    return x
