"""Compact vectors: int8 and sign-bit codes, base64 floats, and exact rescoring.

One module serves both users of compact vectors, so that the index and the HTTP API agree
byte for byte:

* the embedded index keeps int8 codes (4x smaller) or sign bits (32x smaller) in memory instead of
  float32 rows, searches them, and rescores the best candidates exactly against the
  full-precision rows it keeps on disk (memory-mapped, read on demand);
* the API answers Cohere's ``embedding_types`` (float, int8, uint8, binary, ubinary, base64)
  and OpenAI's ``encoding_format=base64``.

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

Only numpy is imported at module level; faiss is imported where a function needs it.
"""

from __future__ import annotations

import base64
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import numpy as np

if TYPE_CHECKING:
    import faiss

#: Cohere's embedding types, in the order its API lists them
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
#: rows encoded, decoded or scored per step: bounds the float32 copies a step makes (~24 MB at d=384)
BLOCK_ROWS = 16_384
#: below this many queries a faiss scan of the codes beats decoding blocks for a matrix product
#: (faiss makes the same switch to BLAS at 20 queries)
FAISS_SCAN_BELOW = 20
#: candidates rescored per result by default: minilm's 384 sign bits need 6-10x (0.958 / 0.985
#: recall@10 at 6x / 10x on real vectors), wider models less
RESCORE_FACTOR = 10
#: at least this many candidates whatever k (Hamming distances tie in large groups)
RESCORE_FLOOR = 100
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


def binary_index(bits: np.ndarray | None = None, *, dim: int | None = None) -> faiss.IndexBinaryFlat:
    """A faiss flat Hamming index holding ``bits`` (from :func:`sign_bits`), or an empty one for
    ``dim``-dimensional vectors: the one in-memory copy of an index's codes."""
    import faiss

    if bits is None and dim is None:
        raise ValueError("binary_index needs the bits or the vectors' dimension")
    width = bits.shape[1] if bits is not None else -(-int(dim) // 8)
    index = faiss.IndexBinaryFlat(8 * width)
    if bits is not None and len(bits):
        index.add(np.ascontiguousarray(bits, np.uint8))
    return index


def hamming_search(index: faiss.IndexBinary, query_bits: np.ndarray, k: int, *, mask: np.ndarray | None = None,
                   ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of a faiss binary index (flat or HNSW) nearest in Hamming distance to each
    query: (int32 distances ascending, int64 row ids, -1 where fewer rows qualify). ``mask``
    (bool per row) lets only its rows through; ``ef_search`` sets an HNSW graph's search depth."""
    import faiss

    queries = np.ascontiguousarray(np.atleast_2d(query_bits), np.uint8)
    selector = bitmap_selector(mask) if mask is not None else None
    if ef_search is not None:
        params = faiss.SearchParametersHNSW(efSearch=int(ef_search))
        if selector is not None:
            params.sel = selector
    else:
        params = faiss.SearchParameters(sel=selector) if selector is not None else None
    return index.search(queries, k, params=params)


def hamming_knn(query_bits: np.ndarray, bits: np.ndarray, k: int, *,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force Hamming top ``k`` over an array of codes (no index: a subset's rows, a
    memory-mapped codes file); the same answer as :func:`hamming_search` on a flat index of them."""
    import faiss

    rows = np.arange(len(bits)) if mask is None else np.flatnonzero(mask)
    codes = bits if mask is None else bits[rows]
    queries = np.ascontiguousarray(np.atleast_2d(query_bits), np.uint8)
    if len(rows) == 0:
        return np.full((len(queries), k), np.iinfo(np.int32).max, np.int32), np.full((len(queries), k), -1, np.int64)
    dist, local = faiss.knn_hamming(queries, np.ascontiguousarray(codes, np.uint8), min(k, len(rows)))
    ids = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
    if ids.shape[1] < k:  # fewer rows than k: pad as the faiss indexes do
        pad = k - ids.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.iinfo(np.int32).max)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return dist, ids


# -- int8 search -----------------------------------------------------------------------------------


def int8_index(codec: Int8Codec, codes: np.ndarray | None = None) -> faiss.IndexScalarQuantizer:
    """A faiss 8-bit scalar-quantizer index (inner product) that decodes exactly as ``codec``
    does, holding int8 ``codes`` as they are (not re-encoded): the one in-memory copy of an
    index's codes, searchable by faiss (and by an HNSW graph over it) and by :func:`int8_search`.
    Append more with ``index.add_sa_codes(unsigned(codes))``."""
    import faiss

    index = faiss.IndexScalarQuantizer(codec.dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    # faiss decodes level u as vmin + (u + 0.5) / 255 * vdiff: lo + u * step for these two
    trained = np.concatenate([codec.lo - codec.step / 2, 255 * codec.step]).astype(np.float32)
    index.sq.trained.resize(len(trained))
    faiss.copy_array_to_vector(trained, index.sq.trained)
    index.is_trained = True
    if codes is not None and len(codes):
        index.add_sa_codes(np.ascontiguousarray(unsigned(codes)))
    return index


def int8_search(index: faiss.IndexScalarQuantizer, queries: np.ndarray, k: int, *,
                mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` of float32 ``queries`` against the decoded rows of an
    :func:`int8_index`: (scores descending, row ids, -1 and -inf where fewer rows qualify).

    A few queries are answered by faiss's scan of the codes; a batch decodes a block of rows at a
    time to float32 and multiplies (BLAS), which is many times faster than faiss's scalar-quantizer
    scan, with only one float32 block in memory beyond the codes."""
    q = _queries(queries)
    if len(q) < FAISS_SCAN_BELOW:
        import faiss

        params = faiss.SearchParameters(sel=bitmap_selector(mask)) if mask is not None else None
        scores, ids = index.search(q, k, params=params)
        return np.where(ids >= 0, scores, -np.inf).astype(np.float32), ids
    return knn_ip(q, index_codes(index), k, mask=mask, decode=index.sa_decode)


def index_codes(index: faiss.Index | faiss.IndexBinary) -> np.ndarray:
    """The codes a faiss flat-codes index holds (scalar-quantizer or binary flat), as an (ntotal,
    code_size) uint8 array: a view, valid until the index next changes."""
    import faiss

    size = index.ntotal * index.code_size
    if size == 0:
        return np.zeros((0, index.code_size), np.uint8)
    data = index.xb.data() if isinstance(index, faiss.IndexBinaryFlat) else index.codes.data()
    return faiss.rev_swig_ptr(data, size).reshape(index.ntotal, index.code_size)


def knn_ip(queries: np.ndarray, rows: np.ndarray, k: int, *, mask: np.ndarray | None = None,
           decode: Any = None, block: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` over ``rows`` a block at a time: each block is decoded to
    float32 (``decode``, e.g. a codec's) or read as it is (float32/float16, a memory map too),
    multiplied with the queries and merged into a running top ``k``. (scores descending, row ids;
    -1 and -inf where fewer rows qualify.)"""
    q = _queries(queries)
    best_scores = np.full((len(q), k), -np.inf, np.float32)
    best_ids = np.full((len(q), k), -1, np.int64)
    for start in range(0, len(rows), block):
        ids = np.arange(start, min(start + block, len(rows)))
        chunk = rows[start:start + block]
        if mask is not None:
            keep = mask[start:start + block]
            if not keep.any():
                continue
            if not keep.all():
                chunk, ids = chunk[keep], ids[keep]
        x = decode(np.ascontiguousarray(chunk)) if decode is not None else np.asarray(chunk, np.float32)
        scores, at = _best(q @ x.T, k)
        merged, pick = _best(np.concatenate([best_scores, scores], axis=1), k)
        best_ids = np.take_along_axis(np.concatenate([best_ids, np.where(at >= 0, ids[at], -1)], axis=1), pick, 1)
        best_scores = merged
    return _ranked(best_scores, best_ids)


# -- rescoring ---------------------------------------------------------------------------------------


def default_rescore_k(k: int) -> int:
    """Candidates a compact first stage hands to rescoring for ``k`` results: ``max(10k, 100)``."""
    return max(RESCORE_FACTOR * k, RESCORE_FLOOR)


def rescore(queries: np.ndarray, candidates: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidate rows of ``vectors`` (full precision,
    float32 or float16, typically memory-mapped from disk), best ``k`` first: (scores, row ids;
    -1 and -inf where a query has fewer than ``k`` candidates).

    ``candidates`` (nq, m) are row ids from a compact first stage, -1 for none. The rows a batch
    needs are read once, in ascending order (sequential reads from a memory map), so only those
    rows are read from disk: memory holds the compact codes and the page cache what was read.
    """
    q = _queries(queries)
    candidates = np.atleast_2d(np.asarray(candidates, np.int64))
    if len(candidates) != len(q):
        raise ValueError(f"{len(q)} queries but candidates for {len(candidates)}")
    out_scores = np.full((len(q), k), -np.inf, np.float32)
    out_ids = np.full((len(q), k), -1, np.int64)
    per_batch = max(1, BLOCK_ROWS // max(1, candidates.shape[1]))
    for start in range(0, len(q), per_batch):
        cand = candidates[start:start + per_batch]
        valid = cand >= 0
        if not valid.any():
            continue
        wanted, where = np.unique(cand[valid], return_inverse=True)
        rows = np.asarray(vectors[wanted], np.float32)  # sorted ids: one forward pass over the file
        slot = np.zeros(cand.shape, np.int64)
        slot[valid] = where
        scores = np.matmul(rows[slot], q[start:start + len(cand), :, None])[..., 0]
        scores[~valid] = -np.inf
        best, at = _best(scores, k)
        best_ids = np.where(at >= 0, np.take_along_axis(cand, np.maximum(at, 0), 1), -1)
        out_scores[start:start + len(cand)], out_ids[start:start + len(cand)] = _ranked(best, best_ids)
    return out_scores, out_ids


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


def bitmap_selector(mask: np.ndarray) -> faiss.IDSelectorBitmap:
    """A faiss selector letting through the rows where ``mask`` (bool per row) is true."""
    import faiss

    bits = np.packbits(np.asarray(mask, bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    selector.buffer = bits  # the selector points into it: keep it alive as long as the selector
    return selector


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


def _queries(queries: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.atleast_2d(queries), np.float32)


def _best(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest scores of each row and their columns, unordered; -inf and column -1 fill
    the slots beyond a row's width."""
    width = scores.shape[1]
    if width <= k:
        at = np.broadcast_to(np.arange(width), scores.shape)
        return (np.pad(scores, ((0, 0), (0, k - width)), constant_values=-np.inf),
                np.pad(at, ((0, 0), (0, k - width)), constant_values=-1))
    at = np.argpartition(scores, width - k, axis=1)[:, -k:]
    return np.take_along_axis(scores, at, 1), at


def _ranked(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best first; an empty slot (-inf) gets id -1."""
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return scores.astype(np.float32), np.where(np.isfinite(scores), ids, -1)
