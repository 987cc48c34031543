"""Compact vector storage: int8 codes or sign bits in memory, full-precision rows on disk.

What an embedded index created with ``quantize="int8"`` or ``"binary"`` keeps instead of a float32
matrix in memory (:class:`~umr.index.store.FlatStore` holds one :class:`CompactVectors` for the
whole index, beside its segments of records). Two files in the index folder, both named by the
manifest's ``compact`` record:

* ``vectors-N.f32``: every row as float32, appended as commits arrive and memory-mapped read-only
  for rescoring, so only the rows a search rescores are read (they count as page cache, not as the
  process's own memory);
* ``codes-N.u8``: the compact codes (int8 levels or sign bits), read into memory on first search.
  Sign bits are stored ``ceil(dim / 8)`` bytes a row and padded with zero bytes in memory to a
  width faiss compares fast (:func:`~umr.index.quantized.padded_width`: 384 bits, 48 bytes, become
  64), which leaves every Hamming distance as it was; the HNSW graph's file records the stored width.

Both are append-only and the manifest says how many rows they hold: a commit appends its rows
(fsynced) before the manifest that counts them is written, and the next commit writes from the
recorded row count on, so rows a killed commit left behind are overwritten, never read. A rewrite
(an int8 re-fit, a compaction) writes new files under new names and the manifest swap adopts them.

Search: the ``rescore_k`` best rows by the codes (Hamming distance for sign bits, a float query
against decoded int8 rows; exactly, or by an HNSW graph over the codes), rescored exactly against
their float32 rows; ``rescore_k=0`` returns the compact ranking as it is. A row mask (deletes,
filters) applies to the first stage.

int8 calibration: each dimension's min/max over the rows of the first commit
(:class:`~umr.core.quantize.PerDimensionInt8`). Later rows beyond that range are clipped and
counted; once more than 0.1% of the values encoded since were clipped and the rows have at least
doubled, the codec is re-fitted on every row and all codes re-encoded from the float rows
(amortised O(n)). A compaction re-fits on the live rows it keeps.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from ..core.atomic import atomic_path, write_bytes_atomic
from ..core.quantize import Int8Codec, PerDimensionInt8, recalibration_due, sign_bits, signed, unsigned
from .quantized import (add_bits, binary_index, bitmap_selector, default_rescore_k, hamming_knn, hamming_search,
                        index_codes, int8_index, int8_search, knn_ip, pad_bits, padded_width, rescore)

Quantize = Literal["int8", "binary"]
QUANTIZE: tuple[str, ...] = ("int8", "binary")
#: rows read from the float file at once (a rewrite, a graph's growth)
CHUNK_ROWS = 65_536


def check_quantize(kind: str | None) -> None:
    """``ValueError`` (one line) unless ``kind`` is None or one of :data:`QUANTIZE`."""
    if kind is not None and kind not in QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE)} (or None for float32), not {kind!r}")


def check_rescore_k(rescore_k: int | None) -> None:
    """``ValueError`` unless ``rescore_k`` is None or a whole number of at least 0."""
    if rescore_k is not None and (isinstance(rescore_k, bool) or not isinstance(rescore_k, (int, np.integer))
                                  or rescore_k < 0):
        raise ValueError(f"rescore_k must be a whole number of candidates (0: no rescoring), not {rescore_k!r}")


def new_record(kind: str) -> dict[str, Any]:
    """The manifest's ``compact`` record of an empty index (its files are made by the first commit)."""
    check_quantize(kind)
    return {"kind": kind, "floats": None, "codes": None, "codec": None, "encoded": 0, "clipped": 0}


def rescore_depth(k: int, rescore_k: int | None) -> int:
    """Candidates rescored for ``k`` results: ``rescore_k`` (at least ``k``; 0: none, the codes'
    ranking is final), by default :func:`~umr.index.quantized.default_rescore_k`."""
    return default_rescore_k(k) if rescore_k is None else max(int(rescore_k), k if rescore_k else 0)


@dataclass(frozen=True)
class Written:
    """What a write put on disk, for the manifest (``record``) and then for memory (``codes``:
    the new rows' codes, or every row's when ``refit``)."""

    record: dict[str, Any]
    rows: int
    codes: np.ndarray
    refit: bool


class CompactVectors:
    """The rows of one index snapshot: codes in memory (read on first search), float32 on disk.

    Writes (:meth:`append`, :meth:`rewrite`) change only files and return the record a manifest
    names; :meth:`take` brings the in-memory codes up to a written record once it is committed.
    """

    def __init__(self, folder: Path, dim: int, record: dict[str, Any], rows: int) -> None:
        self.folder, self.dim = Path(folder), int(dim)
        self.record, self.rows = record, int(rows)
        self.codec: Int8Codec | None = Int8Codec.from_json(record["codec"]) if record.get("codec") else None
        self.index = None  # the codes as a faiss flat index, read on first search
        self._graph: CompactGraph | None = None
        self._floats: np.memmap | None = None

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def code_size(self) -> int:
        """Bytes a row's codes take on disk: ``dim`` for int8, ``ceil(dim / 8)`` for sign bits."""
        return self.dim if self.kind == "int8" else -(-self.dim // 8)

    @property
    def memory_code_size(self) -> int:
        """Bytes a row's codes take in memory: sign bits padded to :func:`~umr.index.quantized.padded_width`."""
        return self.code_size if self.kind == "int8" else padded_width(self.code_size)

    @property
    def memory_bytes(self) -> int:
        """The codes' bytes: all this keeps in memory per row (the floats stay on disk)."""
        return self.rows * self.memory_code_size

    def floats(self) -> np.ndarray:
        """The float32 rows, memory-mapped read-only (nothing is read until used)."""
        if not self.rows:
            return np.zeros((0, self.dim), np.float32)
        if self._floats is None or len(self._floats) != self.rows:
            self._floats = np.memmap(self.folder / self.record["floats"], np.float32, "r",
                                     shape=(self.rows, self.dim))
        return self._floats

    def codes(self) -> np.ndarray:
        """Every row's codes as stored, (rows, code_size) uint8: from memory once read (a view
        without the padding), else from the file."""
        if self.index is not None:
            return index_codes(self.index)[:, :self.code_size]
        if not self.rows:
            return np.zeros((0, self.code_size), np.uint8)
        with open(self.folder / self.record["codes"], "rb") as handle:
            codes = np.fromfile(handle, np.uint8, self.rows * self.code_size)
        if codes.size != self.rows * self.code_size:
            raise ValueError(f"{self.folder / self.record['codes']} holds fewer rows than the manifest ({self.rows})")
        return codes.reshape(self.rows, self.code_size)

    # -- writing: files only ------------------------------------------------------------------------

    def append(self, vectors: np.ndarray, number: int) -> Written:
        """Append rows to both files (fsynced), past the recorded rows; an int8 index calibrates on
        its first rows and re-fits when clipping calls for it, writing every row's codes to a new
        codes file. ``number``: the commit's file number (names of new files)."""
        x = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have {x.shape[1]} dimensions, the index {self.dim}")
        record = dict(self.record)
        if record["floats"] is None:
            record["floats"], record["codes"] = floats_name(number), codes_name(number)
        rows = self.rows + len(x)
        _write_at(self.folder / record["floats"], self.rows * 4 * self.dim, x)
        if self.kind == "binary":
            codes = sign_bits(x)
        else:
            codec = self.codec or _calibrate(x)
            encoded, clipped = codec.encode(x)
            record.update(codec=codec.to_json(), encoded=record["encoded"] + x.size,
                          clipped=record["clipped"] + clipped)
            if recalibration_due(clipped=record["clipped"], encoded=record["encoded"], rows=rows,
                                 calibrated_rows=codec.rows):
                floats = np.memmap(self.folder / record["floats"], np.float32, "r", shape=(rows, self.dim))
                codec = PerDimensionInt8.fit(floats)
                everything, clipped = codec.encode(floats)
                record.update(codes=codes_name(number), codec=codec.to_json(), encoded=floats.size, clipped=clipped)
                write_bytes_atomic(self.folder / record["codes"], _unsigned(everything).tobytes(), sync_dir=False)
                return Written(record, rows, _unsigned(everything), True)
            codes = _unsigned(encoded)
        _write_at(self.folder / record["codes"], self.rows * self.code_size, codes)
        return Written(record, rows, codes, False)

    def rewrite(self, keep: np.ndarray, number: int) -> Written:
        """New files holding only the rows ``keep`` (ascending row numbers), int8 re-fitted on
        them: what a compaction's manifest names."""
        record = {**new_record(self.kind), "floats": floats_name(number), "codes": codes_name(number)}
        floats = self.floats()
        with atomic_path(self.folder / record["floats"], sync_dir=False) as tmp, open(tmp, "wb") as handle:
            for start in range(0, len(keep), CHUNK_ROWS):
                handle.write(np.ascontiguousarray(floats[keep[start:start + CHUNK_ROWS]]).tobytes())
        kept = (np.memmap(self.folder / record["floats"], np.float32, "r", shape=(len(keep), self.dim))
                if len(keep) else np.zeros((0, self.dim), np.float32))
        if self.kind == "binary":
            codes = np.concatenate([sign_bits(kept[s:s + CHUNK_ROWS]) for s in range(0, len(keep), CHUNK_ROWS)]) \
                if len(keep) else np.zeros((0, self.code_size), np.uint8)
        elif len(keep):
            codec = _calibrate(kept)
            encoded, clipped = codec.encode(kept)
            codes = _unsigned(encoded)
            record.update(codec=codec.to_json(), encoded=kept.size, clipped=clipped)
        else:
            codes = np.zeros((0, self.code_size), np.uint8)
        write_bytes_atomic(self.folder / record["codes"], codes.tobytes(), sync_dir=False)
        return Written(record, len(keep), codes, True)

    # -- memory -------------------------------------------------------------------------------------

    def take(self, written: Written) -> None:
        """Adopt a committed write: its record, its rows and (if read already) its codes."""
        self.record, self.rows = written.record, written.rows
        self.codec = Int8Codec.from_json(written.record["codec"]) if written.record.get("codec") else None
        if self.index is None:
            return
        if written.refit:
            self.index = self._new_index(written.codes)
            if self._graph is not None:
                self._graph.attach(self.index)
        else:
            self.index.add_sa_codes(written.codes) if self.kind == "int8" else add_bits(self.index, written.codes)

    def first_stage_index(self):
        """The codes as a faiss flat index (binary Hamming, or an 8-bit scalar quantizer decoding as
        the codec does), read from the codes file on first use."""
        if self.index is None:
            self.index = self._new_index(self.codes())
        return self.index

    def _new_index(self, codes: np.ndarray):
        if self.kind == "binary":
            return binary_index(codes) if len(codes) else binary_index(dim=self.dim)
        return int8_index(self.codec or _placeholder_codec(self.dim), signed(codes))

    # -- searching ----------------------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, rescore_k: int | None = None, mask: np.ndarray | None = None,
               graph: CompactGraph | None = None, ef_search: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best rows for each float32 query: (scores descending, row ids; -inf and -1 where
        fewer rows qualify). ``rescore_k`` candidates from the codes (default
        :func:`~umr.index.quantized.default_rescore_k`; 0: the codes' own ranking and, for int8,
        scores of the decoded rows, for sign bits ``dim - 2 * Hamming distance``), found by
        ``graph`` when given (the rows it does not cover exactly). ``mask``: rows allowed."""
        q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if mask is not None and len(mask) != self.rows:
            raise ValueError(f"a mask of {len(mask)} rows for an index of {self.rows}")
        if not self.rows:
            return np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64)
        depth = rescore_depth(k, rescore_k)
        first = depth or k
        if graph is None:
            scores, ids = self._exact(q, first, mask, 0)
        else:
            scores, ids = self._walk(q, first, mask, graph, max(int(ef_search), first))
        if not depth:
            pad = ((0, 0), (0, max(0, k - ids.shape[1])))
            return (np.pad(scores[:, :k], pad, constant_values=-np.inf), np.pad(ids[:, :k], pad, constant_values=-1))
        return rescore(q, ids, self.floats(), k)

    def _exact(self, q: np.ndarray, k: int, mask: np.ndarray | None, start: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by the codes of rows ``start`` on (ids are global rows), as similarities."""
        index = self.first_stage_index()
        if start == 0:
            if self.kind == "binary":
                return self._similarity(*hamming_search(index, sign_bits(q), k, mask=mask))
            return int8_search(index, q, k, mask=mask)
        codes = index_codes(index)[start:]
        tail = None if mask is None else mask[start:]
        if self.kind == "binary":
            scores, ids = self._similarity(*hamming_knn(sign_bits(q), codes, k, mask=tail))
        else:
            scores, ids = knn_ip(q, codes, k, mask=tail, decode=index.sa_decode)
        return scores, np.where(ids >= 0, ids + start, -1)

    def _walk(self, q: np.ndarray, k: int, mask: np.ndarray | None, graph: CompactGraph,
              ef: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by an HNSW walk of the rows ``graph`` covers, merged with an exact search of the rest."""
        import faiss

        params = faiss.SearchParametersHNSW(efSearch=ef)
        if mask is not None:
            params.sel = bitmap_selector(mask[:graph.rows])
        covered = min(k, graph.rows)
        if self.kind == "binary":
            bits = pad_bits(sign_bits(q), graph.index.code_size)
            scores, ids = self._similarity(*graph.index.search(bits, covered, params=params))
        else:
            scores, ids = graph.index.search(q, covered, params=params)
            scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
        if graph.rows < self.rows:
            tail_scores, tail_ids = self._exact(q, k, mask, graph.rows)
            scores, ids = np.concatenate([scores, tail_scores], 1), np.concatenate([ids, tail_ids], 1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)

    def _similarity(self, dist: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Hamming distances as similarities, ``dim - 2 * distance`` (higher is better)."""
        return np.where(ids >= 0, self.dim - 2 * dist.astype(np.float32), -np.inf).astype(np.float32), ids

    # -- the HNSW graph -----------------------------------------------------------------------------

    def graph(self, file: str, rows: int) -> CompactGraph:
        """The HNSW graph persisted in ``file`` (over the first ``rows`` rows), read on first use,
        searching this index's one in-memory copy of the codes."""
        import faiss

        if self._graph is None or self._graph.file != file:
            path = str(self.folder / file)
            index = faiss.read_index_binary(path) if self.kind == "binary" else faiss.read_index(path)
            _drop_storage(index)
            self._graph = CompactGraph(file, rows, index)
            self._graph.attach(self.first_stage_index())
        return self._graph

    def grow_graph(self, info: dict[str, Any] | None, *, m: int, ef_construction: int, target: Path,
                   progress: Callable[[int], Any] | None = None) -> CompactGraph:
        """The graph the manifest's ``info`` names (read again from its file: searches keep using
        the current one meanwhile), or a new one, extended to every row and written to ``target``;
        :meth:`keep_graph` it once the manifest names it.

        Over sign bits it is faiss's IndexBinaryHNSW; over int8 codes an IndexHNSW on an 8-bit
        scalar-quantizer storage (faiss's IndexHNSWSQ) calibrated as the index's codec, so both
        build and search on the codes alone. Rows are added from a working copy of the codes."""
        import faiss

        codes = self.codes()
        start = info["rows"] if info else 0
        work = self._new_index(codes[:start])
        if not info:
            index = faiss.IndexBinaryHNSW(work, m) if self.kind == "binary" else faiss.IndexHNSW(work, m)
            index.hnsw.efConstruction = ef_construction
        else:
            path = str(self.folder / info["file"])
            index = faiss.read_index_binary(path) if self.kind == "binary" else faiss.read_index(path)
            _drop_storage(index)
            _use_storage(index, work)
        for begin in range(start, self.rows, CHUNK_ROWS):
            end = min(begin + CHUNK_ROWS, self.rows)
            if self.kind == "binary":
                add_bits(index, codes[begin:end])
            else:  # int8 rows go in as their decoded values, which encode back to the same codes
                index.add(work.sa_decode(codes[begin:end]))
            if progress:
                progress(end - start)
        with atomic_path(target) as tmp:
            if self.kind == "binary":
                _write_binary_graph(index, str(tmp), codes)
            else:
                faiss.write_index(index, str(tmp), faiss.IO_FLAG_SKIP_STORAGE)
        graph = CompactGraph(target.name, self.rows, index)
        graph.attach(self.first_stage_index())
        return graph

    def keep_graph(self, graph: CompactGraph) -> None:
        self._graph = graph


@dataclass
class CompactGraph:
    """An HNSW graph over the first ``rows`` codes of an index."""

    file: str
    rows: int
    index: Any
    storage: Any = None

    def attach(self, storage) -> None:
        """Search ``storage`` (the index's codes, kept alive here) from now on."""
        _use_storage(self.index, storage)
        self.storage = storage


def floats_name(number: int) -> str:
    return f"vectors-{number:06d}.f32"


def codes_name(number: int) -> str:
    return f"codes-{number:06d}.u8"


def _calibrate(x: np.ndarray) -> PerDimensionInt8:
    """The per-dimension int8 codec of the first rows; a single row calibrates to itself (every
    other value is clipped, and the next commit re-fits)."""
    return PerDimensionInt8.fit(x) if len(x) > 1 else PerDimensionInt8(x[0], x[0], 1)


def _placeholder_codec(dim: int) -> PerDimensionInt8:
    """The codec of an int8 index with no rows yet (its first commit calibrates the real one)."""
    return PerDimensionInt8(np.zeros(dim, np.float32), np.ones(dim, np.float32), 0)


def _unsigned(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(unsigned(codes))


def _drop_storage(index) -> None:
    """Let Python free the storage a graph read from a file owns (the index's codes replace it)."""
    storage = index.storage
    index.own_fields = False
    if storage is not None:
        storage.this.own(True)


def _use_storage(graph, storage) -> None:
    """Let HNSW ``graph`` search ``storage``; a binary graph takes on the storage's (padded) code
    width too, by which faiss picks its Hamming distance code."""
    import faiss

    graph.storage = storage
    if isinstance(graph, faiss.IndexBinary):
        graph.d, graph.code_size = storage.d, storage.code_size


def _write_binary_graph(graph, path: str, codes: np.ndarray) -> None:
    """Write a binary HNSW graph as it would be over the codes as stored (``codes``, unpadded):
    faiss writes a binary graph's codes into its file, and the file keeps the stored width
    whatever width memory pads them to (reading it, :func:`_use_storage` pads again)."""
    import faiss

    stored = faiss.IndexBinaryFlat(8 * codes.shape[1])
    stored.add(np.ascontiguousarray(codes))
    padded, width = graph.storage, (graph.d, graph.code_size)
    graph.storage, graph.d, graph.code_size = stored, stored.d, stored.code_size
    try:
        faiss.write_index_binary(graph, path)
    finally:
        graph.storage, (graph.d, graph.code_size) = padded, width


def _write_at(path: Path, offset: int, data: np.ndarray) -> None:
    """Write ``data`` at ``offset`` of ``path`` (created if missing), cut the file there, fsync."""
    with open(path, "r+b" if path.exists() else "wb") as handle:
        handle.seek(offset)
        handle.write(np.ascontiguousarray(data).tobytes())
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())
