"""Searching compact codes: Hamming search of sign bits, inner-product search of int8 codes, and
exact rescoring of the candidates against full-precision rows kept on disk.

The codes themselves (what int8 and binary mean, calibration, clipping) are
:mod:`umr.core.quantize`'s, shared with the HTTP API; this module is the index's side of them.
faiss is imported where a function needs it (it is heavy and only search needs it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from umr.core import quantize
from umr.core.quantize import Int8Codec, unsigned

if TYPE_CHECKING:
    import faiss

#: below this many queries a faiss scan of the codes beats decoding blocks for a matrix product
#: (faiss makes the same switch to BLAS at 20 queries)
FAISS_SCAN_BELOW = 20
#: candidates rescored per result by default: minilm's 384 sign bits need 10x on 50k real vectors
#: (0.985 recall@10) but 20x on 1M (benchmarks/quantized.py: 0.950 at 100 candidates, 0.992 at
#: 200, at the same queries/s); wider models need less
RESCORE_FACTOR = 20
#: at least this many candidates whatever k (Hamming distances tie in large groups)
RESCORE_FLOOR = 200


# -- sign bits --------------------------------------------------------------------------------------

#: code sizes (bytes) faiss compares with a specialised unrolled HammingComputer
#: (faiss/utils/hamming_distance/hamdis-inl.h); other sizes take its generic loop, which at 48
#: bytes (384 sign bits) scans 1M codes at about half the speed of the same codes padded to 64
FAST_CODE_SIZES = (4, 8, 16, 20, 32, 64)


def padded_width(width: int) -> int:
    """Bytes a ``width``-byte sign-bit code takes in a faiss index: the next size faiss compares
    fastest (:data:`FAST_CODE_SIZES`), beyond 64 bytes the next multiple of 8 (the generic loop
    works a 64-bit word at a time; padding 96 or 192 bytes further measured slower)."""
    fast = next((size for size in FAST_CODE_SIZES if size >= width), None)
    return fast if fast is not None else -(-int(width) // 8) * 8


def pad_bits(bits: np.ndarray, width: int | None = None) -> np.ndarray:
    """Sign-bit codes with zero bytes appended up to ``width`` (default :func:`padded_width`): the
    zeros match in every code, so Hamming distances are unchanged. Contiguous uint8, no copy when
    already that wide."""
    bits = np.atleast_2d(bits)
    width = padded_width(bits.shape[1]) if width is None else width
    if bits.shape[1] > width:
        raise ValueError(f"codes of {bits.shape[1]} bytes do not fit in {width}")
    if bits.shape[1] == width:
        return np.ascontiguousarray(bits, np.uint8)
    padded = np.zeros((len(bits), width), np.uint8)
    padded[:, :bits.shape[1]] = bits
    return padded


def binary_index(bits: np.ndarray | None = None, *, dim: int | None = None) -> faiss.IndexBinaryFlat:
    """A faiss flat Hamming index holding ``bits`` (from :func:`sign_bits`), or an empty one for
    ``dim``-dimensional vectors: the one in-memory copy of an index's codes. Its codes are
    :func:`pad_bits`-padded (``code_size`` is :func:`padded_width`), so add codes and search
    queries through :func:`pad_bits`, as :func:`hamming_search` does."""
    import faiss

    if bits is None and dim is None:
        raise ValueError("binary_index needs the bits or the vectors' dimension")
    width = bits.shape[1] if bits is not None else -(-int(dim) // 8)
    index = faiss.IndexBinaryFlat(8 * padded_width(width))
    if bits is not None:
        add_bits(index, bits)
    return index


def add_bits(index: faiss.IndexBinary, bits: np.ndarray) -> None:
    """Append sign-bit codes to a :func:`binary_index` (or a graph over one), padded to its code size."""
    if len(bits):
        index.add(pad_bits(bits, index.code_size))


def hamming_search(index: faiss.IndexBinary, query_bits: np.ndarray, k: int, *, mask: np.ndarray | None = None,
                   ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of a faiss binary index (flat or HNSW) nearest in Hamming distance to each
    query: (int32 distances ascending, int64 row ids, -1 where fewer rows qualify). The query bits
    are padded to the index's code size. ``mask`` (bool per row) lets only its rows through;
    ``ef_search`` sets an HNSW graph's search depth."""
    import faiss

    queries = pad_bits(query_bits, index.code_size)
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
    """Brute-force Hamming top ``k`` over an array of codes, padded or not (no index: a subset's
    rows, a memory-mapped codes file); the same answer as :func:`hamming_search` on a flat index
    of them. Codes narrower than :func:`padded_width` are padded (copied) first."""
    import faiss

    rows = np.arange(len(bits)) if mask is None else np.flatnonzero(mask)
    codes = pad_bits(bits if mask is None else bits[rows])
    queries = pad_bits(query_bits, codes.shape[1])
    if len(rows) == 0:
        return np.full((len(queries), k), np.iinfo(np.int32).max, np.int32), np.full((len(queries), k), -1, np.int64)
    dist, local = faiss.knn_hamming(queries, codes, min(k, len(rows)))
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
           decode: Any = None, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` over ``rows`` a block at a time: each block is decoded to
    float32 (``decode``, e.g. a codec's) or read as it is (float32/float16, a memory map too),
    multiplied with the queries and merged into a running top ``k``. (scores descending, row ids;
    -1 and -inf where fewer rows qualify.) ``block``: rows a step, default the codec's ``BLOCK_ROWS``."""
    block = block or quantize.BLOCK_ROWS
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
    """Candidates a compact first stage hands to rescoring for ``k`` results: ``max(20k, 200)``."""
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
    per_batch = max(1, quantize.BLOCK_ROWS // max(1, candidates.shape[1]))
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




def bitmap_selector(mask: np.ndarray) -> faiss.IDSelectorBitmap:
    """A faiss selector letting through the rows where ``mask`` (bool per row) is true."""
    import faiss

    bits = np.packbits(np.asarray(mask, bool), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    selector.buffer = bits  # the selector points into it: keep it alive as long as the selector
    return selector


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
