"""The embedded vector store: vectors and records persisted in one folder, crash-safe.

Layout of an index folder::

    manifest.json        the one source of truth, replaced atomically (:mod:`umr.core.atomic`)
    seg-000001.npy       float32 vectors of one commit, never modified once written
    seg-000001.jsonl     one record per vector row (id, hash, modality, path, text, meta)
    seg-000001.keys      the ids and content hashes of those rows (JSON), read fast on open
    del-000007.npy       int64 global row numbers deleted (updates delete the old row)
    hnsw-000007.faiss    optional HNSW graph over the first ``rows`` global rows (no vectors:
                         it searches the vectors of the segments)
    .lock                held (flock) by the one writer

A commit writes its new files, fsyncs them, then swaps the manifest. A process killed at any
moment leaves either the old or the new manifest, both pointing only at complete files; files a
dead commit left behind are not referenced and are removed by the next writer.

Memory: a reader keeps the snapshot its manifest named when it opened, and reads records from
the segment files on demand (no file stays open). A reader whose files a writer has compacted
away since loads the current snapshot and retries, so a search still sees whole commits only.
The vectors are held once, in FAISS's flat index, built on the first search; the HNSW graph
searches that same copy. A commit appends to it, so building N rows costs O(N).
"""

from __future__ import annotations

import bisect
import fcntl
import json
import os
import re
import threading
import time
from collections import Counter, OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..core.atomic import atomic_path, fsync_dir, write_bytes_atomic
from .base import (FORMAT, MANIFEST, Filter, Hit, IndexLocked, IndexStoreError, VectorStore,
                   check_search_args, json_line, read_manifest, write_manifest)

__all__ = ["FORMAT", "MANIFEST", "Filter", "FlatStore", "Hit", "IndexLocked", "IndexStoreError", "read_manifest"]

#: superseded deleted-rows files kept for readers still loading an older manifest
KEEP_SUPERSEDED = 16
#: filter masks kept (one byte per row each)
MASK_CACHE = 8
#: a filter letting through at most this share of rows is searched by brute force over copies
#: of just those vectors, kept while all such copies stay under SUBSET_BUDGET of the matrix
SUBSET_SHARE = 0.05
SUBSET_BUDGET = 0.1
_DATA_FILE = re.compile(r"^(seg-\d+\.(npy|jsonl|keys)|del-\d+\.npy|hnsw-\d+\.faiss)(\.tmp)?$")
_CHUNK_ROWS = 65_536


# -- files -----------------------------------------------------------------------------------------


def _write_npy(path: Path, rows: int, dim: int, blocks: Iterable[np.ndarray]) -> None:
    """A float32 ``.npy`` written block by block (compacting never gathers the whole matrix)."""

    def write(handle) -> None:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rows, dim)})
        for block in blocks:
            handle.write(np.ascontiguousarray(block, dtype="<f4").data)

    write_bytes_atomic(path, write, sync_dir=False)


def _write_segment(folder: Path, name: str, lines: Iterable[bytes], ids: Sequence[str],
                   hashes: Sequence[str | None], vectors_rows: int, dim: int,
                   vector_blocks: Iterable[np.ndarray]) -> None:
    """A segment's three files, each whole or not at all; the commit fsyncs the folder once for all."""
    write_bytes_atomic(folder / f"{name}.jsonl", lambda h: h.writelines(line + b"\n" for line in lines),
                       sync_dir=False)
    write_bytes_atomic(folder / f"{name}.keys", json_line([list(ids), list(hashes)]).encode(), sync_dir=False)
    _write_npy(folder / f"{name}.npy", vectors_rows, dim, vector_blocks)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, reading nothing else."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    return shape, dtype


class _Segment:
    """One commit's files, read on demand and never held open (an index of thousands of
    segments must not hold thousands of file descriptors)."""

    def __init__(self, folder: Path, name: str, rows: int, start: int, dim: int):
        self.name, self.rows, self.start = name, int(rows), int(start)
        self._base = folder / name
        self._ends: np.ndarray | None = None
        self._where = f"{folder}: segment {name}"
        shape, dtype = _npy_shape(self.path(".npy"))
        if shape != (self.rows, dim) or dtype != np.float32:
            raise IndexStoreError(f"{self._where} does not match the manifest (vectors "
                                  f"{shape}, expected {(self.rows, dim)})")
        for suffix in (".jsonl", ".keys"):
            self.path(suffix).stat()  # a file a writer removed since: FileNotFoundError, retried

    def path(self, suffix: str) -> Path:
        return self._base.with_name(self._base.name + suffix)

    def vectors(self) -> np.ndarray:
        """The vectors, memory-mapped for as long as the caller holds them."""
        return np.load(self.path(".npy"), mmap_mode="r", allow_pickle=False)

    def ends(self) -> np.ndarray:
        """Where each record's line ends (its newline), found on first use."""
        if self._ends is None:
            found, offset = [], 0
            with open(self.path(".jsonl"), "rb") as handle:
                while chunk := handle.read(1 << 24):
                    found.append(np.flatnonzero(np.frombuffer(chunk, np.uint8) == 10) + offset)
                    offset += len(chunk)
            ends = np.concatenate(found) if found else np.zeros(0, np.int64)
            if len(ends) != self.rows:
                raise IndexStoreError(f"{self._where} holds {len(ends)} records, expected {self.rows}")
            self._ends = ends
        return self._ends

    def lines_at(self, rows: Sequence[int]) -> list[bytes]:
        ends = self.ends()
        with open(self.path(".jsonl"), "rb") as handle:
            out = []
            for j in rows:
                begin = int(ends[j - 1]) + 1 if j else 0
                out.append(os.pread(handle.fileno(), int(ends[j]) - begin, begin))
            return out

    def lines(self, alive: np.ndarray | None = None) -> Iterator[tuple[int, bytes]]:
        """(local row, line) of every row, or of the rows ``alive`` marks, read in one pass."""
        with open(self.path(".jsonl"), "rb") as handle:
            for j, line in enumerate(handle):
                if alive is None or alive[j]:
                    yield j, line[:-1]

    def keys(self) -> tuple[list[str], list[str | None]]:
        ids, hashes = json.loads(self.path(".keys").read_bytes())
        if len(ids) != self.rows:
            raise IndexStoreError(f"{self._where} names {len(ids)} ids, expected {self.rows}")
        return ids, hashes


class _Flags:
    """A bool per row that grows by appending, with amortised O(1) cost per row."""

    def __init__(self, size: int = 0):
        self._data = np.zeros(max(size, 1024), bool)
        self.size = size

    def grow(self, n: int) -> None:
        if self.size + n > len(self._data):
            data = np.zeros(max(2 * len(self._data), self.size + n), bool)
            data[:self.size] = self._data[:self.size]
            self._data = data
        self.size += n

    def view(self) -> np.ndarray:
        return self._data[:self.size]


@dataclass
class _Keys:
    """Ids and hashes by row and the row of every live id: what writes and lookups by id need,
    loaded on first use (a search never needs them)."""

    ids: list[str]
    hashes: list[str | None]
    row_of: dict[str, int]


@dataclass
class _State:
    """One consistent snapshot: what a manifest names, mapped."""

    manifest: dict[str, Any]
    segments: list[_Segment] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # first global row of each segment
    rows: int = 0
    deleted: _Flags = field(default_factory=_Flags)
    deleted_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    keys: _Keys | None = None

    def records_at(self, rows: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Records of global ``rows``, each segment's file opened once."""
        by_segment: dict[int, list[int]] = {}
        for row in rows:
            by_segment.setdefault(bisect.bisect_right(self.starts, row) - 1, []).append(row)
        found = {}
        for index, seg_rows in by_segment.items():
            seg = self.segments[index]
            for row, line in zip(seg_rows, seg.lines_at([r - seg.start for r in seg_rows])):
                found[row] = json.loads(line)
        return found

    def live_lines(self) -> Iterator[tuple[int, bytes]]:
        """(global row, record line) of every live row, segment by segment."""
        deleted = self.deleted.view()
        for seg in self.segments:
            dead = deleted[seg.start:seg.start + seg.rows]
            for j, line in seg.lines(~dead if dead.any() else None):
                yield seg.start + j, line


class _ReadWriteLock:
    """Searches run together; a commit that changes what they read (FAISS's growing buffer)
    waits for them and holds them off."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self):
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


# -- the store -------------------------------------------------------------------------------------


class FlatStore(VectorStore):
    """Vectors + records in a folder; exact inner-product search (FAISS), HNSW optional.

    Use :meth:`create` / :meth:`open`; writes need ``writable=True`` (one writer at a time).
    """

    backend = "faiss"

    def __init__(self, folder: Path, state: _State, *, writable: bool, lock_handle=None):
        self.folder = Path(folder)
        self._state = state
        self.writable = writable
        self._lock_handle = lock_handle
        self._flat = None
        self._hnsw = None
        self._masks: OrderedDict[Filter | None, np.ndarray] = OrderedDict()
        self._subsets: OrderedDict[Filter | None, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._fields: set[str] | None = None
        #: live items per modality, counted on first use and kept current by every commit
        self._modalities: Counter[str] | None = None
        self._superseded: list[str] = []
        self._mutex = threading.Lock()  # lazily built structures and caches
        self._rw = _ReadWriteLock()  # searches vs. in-memory changes of a commit
        self._writing = threading.Lock()  # one commit at a time

    # construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, *, dim: int, config: dict[str, Any]) -> "FlatStore":
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lock = _acquire_lock(folder)
        if (folder / MANIFEST).exists():
            _release_lock(lock)
            raise IndexStoreError(f"{folder} already holds an index")
        manifest = {"format": FORMAT, "version": 0, "dim": int(dim), "config": config,
                    "segments": [], "deleted": None, "hnsw": None, "next_file": 1}
        write_manifest(folder, manifest)
        state = _State(manifest, keys=_Keys([], [], {}))
        return cls(folder, state, writable=True, lock_handle=lock)

    @classmethod
    def open(cls, folder: str | Path, *, writable: bool = False) -> "FlatStore":
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexStoreError(f"no index folder {folder}")
        lock = _acquire_lock(folder) if writable else None
        try:
            state = _load_state(folder)
            store = cls(folder, state, writable=writable, lock_handle=lock)
            if writable:
                store._collect_garbage()
            return store
        except BaseException:
            if lock is not None:
                _release_lock(lock)
            raise

    def close(self) -> None:
        if self._lock_handle is not None:
            _release_lock(self._lock_handle)
            self._lock_handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # reading ---------------------------------------------------------------------------------

    @property
    def manifest(self) -> dict[str, Any]:
        return self._state.manifest

    @property
    def config(self) -> dict[str, Any]:
        return self._state.manifest["config"]

    @property
    def dim(self) -> int:
        return int(self._state.manifest["dim"])

    @property
    def rows(self) -> int:
        """Rows held, live or deleted (a replaced item keeps its old row until :meth:`compact`)."""
        return self._state.rows

    def __len__(self) -> int:
        return self._state.rows - len(self._state.deleted_rows)

    def ids(self) -> list[str]:
        return self._reading(lambda: list(self._keys().row_of))

    def hashes(self) -> dict[str, str]:
        def read():
            keys = self._keys()
            return {i: keys.hashes[r] for i, r in keys.row_of.items()}

        return self._reading(read)

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        ids = list(ids)

        def read():
            with self._rw.read():
                row_of, state = self._keys().row_of, self._state
                records = state.records_at(row_of[i] for i in ids if i in row_of)
                return [records[row_of[i]] if i in row_of else None for i in ids]

        return self._reading(read)

    def records(self) -> Iterable[dict[str, Any]]:
        for _, line in self._state.live_lines():
            yield json.loads(line)

    def metadata_fields(self) -> set[str]:
        with self._mutex:
            if self._fields is not None:
                return set(self._fields)

        def read():
            fields: set[str] = set()
            with self._rw.read():
                for _, line in self._state.live_lines():
                    fields.update((json.loads(line).get("meta") or {}).keys())
            return fields

        fields = self._reading(read)
        with self._mutex:
            self._fields = fields
        return set(fields)

    def modality_counts(self) -> dict[str, int]:
        with self._mutex:
            if self._modalities is not None:
                return {m: n for m, n in self._modalities.items() if n}

        def read():
            with self._rw.read():  # no commit between counting and keeping the count
                counts = Counter(json.loads(line).get("modality") or "" for _, line in self._state.live_lines())
                with self._mutex:
                    self._modalities = counts
                    return {m: n for m, n in counts.items() if n}

        return self._reading(read)

    def check_id(self, item_id: str) -> str | None:
        return None  # any text is stored exactly (JSON escapes what UTF-8 cannot hold)

    def hnsw_graph(self):
        """The persisted HNSW graph (a FAISS index searching this store's vectors), or None."""
        info = self._state.manifest.get("hnsw")
        return self._graph(info) if info else None

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None,
               method: str | None = None, ef_search: int | None = None) -> list[list[Hit]]:
        """Top-``k`` live records per query by inner product, best first."""
        check_search_args(k, ef_search)
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self._reading(lambda: self._search(queries, k, filter, method, ef_search))

    def _search(self, queries, k, filter, method, ef_search) -> list[list[Hit]]:
        with self._rw.read():
            state = self._state
            if len(self) == 0:
                return [[] for _ in queries]
            method = method or self.config.get("method", "exact")
            mask = self._mask(filter)
            info = state.manifest.get("hnsw")
            graph = None
            if method == "hnsw" and info:
                try:
                    graph = self._graph(info)
                except FileNotFoundError:  # a writer replaced the graph since this snapshot: search exactly
                    graph = None
            if graph is not None:
                scores, rows = self._search_hnsw(graph, info["rows"], queries, k, mask, ef_search, filter)
            else:
                scores, rows = self._search_flat(queries, k, mask, filter)
            records = state.records_at({int(r) for qr in rows for r in qr if r >= 0})
            return [[Hit(float(s), records[int(r)]) for s, r in zip(qs, qr) if r >= 0]
                    for qs, qr in zip(scores, rows)]

    # writing ---------------------------------------------------------------------------------

    def commit(self, records: Sequence[dict[str, Any]], vectors: np.ndarray,
               delete_ids: Iterable[str] = ()) -> None:
        """Atomically upsert ``records`` (with their ``vectors``) and delete ``delete_ids``.

        A record whose id is already live replaces it (the old row is deleted).
        """
        self._require_writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records but {len(vectors)} vectors")
        ids = [str(r["id"]) for r in records]
        if len(set(ids)) != len(ids):
            raise ValueError("duplicate ids within one commit")
        lines = [json_line(r).encode("utf-8") for r in records]
        with self._writing:
            state, keys = self._state, self._keys()
            new = set(ids)
            drop = {keys.row_of[i] for i in ids if i in keys.row_of}
            drop |= {keys.row_of[i] for i in delete_ids if i in keys.row_of and i not in new}
            if not records and not drop:
                return
            manifest = json.loads(json.dumps(state.manifest))
            number = manifest["next_file"]
            manifest["next_file"] = number + 1
            manifest["version"] += 1
            name = f"seg-{number:06d}"
            if records:
                _write_segment(self.folder, name, lines, ids, [r.get("hash") for r in records],
                               len(vectors), self.dim, [vectors])
                manifest["segments"].append({"name": name, "rows": len(records)})
            deleted_rows = state.deleted_rows
            if drop:
                deleted_rows = np.union1d(deleted_rows, np.fromiter(drop, np.int64, len(drop)))
                del_name = f"del-{number:06d}.npy"
                _write_npy_int(self.folder / del_name, deleted_rows)
                manifest["deleted"] = del_name
            fsync_dir(self.folder)
            superseded = state.manifest.get("deleted")
            write_manifest(self.folder, manifest)
            segment = _Segment(self.folder, name, len(records), state.rows, self.dim) if records else None
            with self._rw.write():
                self._apply(manifest, segment, ids, records, vectors, drop, deleted_rows)
            if superseded and superseded != manifest.get("deleted"):
                # Readers load the deleted-rows file right after the manifest; keeping the last few
                # superseded ones gives a reader that read an older manifest time to finish.
                self._superseded.append(superseded)
                while len(self._superseded) > KEEP_SUPERSEDED:
                    (self.folder / self._superseded.pop(0)).unlink(missing_ok=True)

    def delete(self, ids: Iterable[str]) -> int:
        row_of = self._keys().row_of
        ids = [i for i in ids if i in row_of]
        self.commit([], np.zeros((0, self.dim), np.float32), delete_ids=ids)
        return len(ids)

    def set_config(self, config: dict[str, Any]) -> None:
        self._require_writable()
        with self._writing:
            manifest = json.loads(json.dumps(self._state.manifest))
            manifest["config"] = config
            manifest["version"] += 1
            write_manifest(self.folder, manifest)
            self._state.manifest = manifest

    def update_graph(self, *, m: int = 32, ef_construction: int = 100) -> None:
        """Extend the persisted HNSW graph once enough rows are outside it.

        Rows added since the graph was last written are searched exactly, so the graph is
        rewritten only when that tail reaches 10,000 rows or 5% of the index (or there is none yet).
        """
        info = self._state.manifest.get("hnsw")
        rows = self._state.rows
        tail = rows - (info["rows"] if info else 0)
        if tail > 0 and (info is None or tail >= max(10_000, rows // 20)):
            self.build_hnsw(m=m, ef_construction=ef_construction)

    def build_hnsw(self, *, m: int = 32, ef_construction: int = 100, progress=None) -> None:
        """Bring the persisted HNSW graph up to date with every row (adding only new rows).

        While it adds rows the graph holds its own copy of the vectors it covers (FAISS adds to
        a graph's storage); once written, it searches the store's one copy again.
        """
        import faiss

        self._require_writable()
        with self._writing:
            state = self._state
            n_rows = state.rows
            info = state.manifest.get("hnsw")
            if info and info["rows"] == n_rows:
                return
            flat = self._flat_index()
            matrix = _matrix(flat, self.dim)
            if info:  # a copy of the graph: searches keep using the current one meanwhile
                graph = _read_graph(self.folder / info["file"])
                start = info["rows"]
                work = faiss.IndexFlatIP(self.dim)
                for begin in range(0, start, _CHUNK_ROWS):
                    work.add(matrix[begin:min(begin + _CHUNK_ROWS, start)])
                graph.storage = work
            else:
                graph = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
                graph.hnsw.efConstruction = ef_construction
                work = _take_storage(graph)
                start = 0
            try:
                step = 50_000
                for begin in range(start, n_rows, step):
                    graph.add(np.ascontiguousarray(matrix[begin:begin + step]))
                    if progress:
                        progress(min(begin + step, n_rows) - start)
                manifest = json.loads(json.dumps(state.manifest))
                number = manifest["next_file"]
                manifest["next_file"] = number + 1
                manifest["version"] += 1
                name = f"hnsw-{number:06d}.faiss"
                with atomic_path(self.folder / name) as tmp:
                    faiss.write_index(graph, str(tmp), faiss.IO_FLAG_SKIP_STORAGE)
                manifest["hnsw"] = {"file": name, "rows": n_rows, "m": m, "ef_construction": ef_construction,
                                    "storage": "segments"}
                write_manifest(self.folder, manifest)
            finally:
                graph.storage = flat
                del work
            with self._rw.write():
                state.manifest = manifest
                self._hnsw = (name, graph)

    def compact(self) -> None:
        """Rewrite live rows into one segment, dropping deleted rows and the HNSW graph."""
        self._require_writable()
        with self._writing:
            state = self._state
            if not len(state.deleted_rows):
                return
            keys = self._keys()
            manifest = json.loads(json.dumps(state.manifest))
            number = manifest["next_file"]
            manifest.update(next_file=number + 1, version=manifest["version"] + 1, deleted=None, hnsw=None)
            name = f"seg-{number:06d}"
            live = np.flatnonzero(~state.deleted.view())
            if len(live):
                lines = (line for _, line in state.live_lines())
                matrix = _matrix(self._flat_index(), self.dim)
                blocks = (matrix[live[b:b + _CHUNK_ROWS]] for b in range(0, len(live), _CHUNK_ROWS))
                rows = live.tolist()
                _write_segment(self.folder, name, lines, [keys.ids[r] for r in rows],
                               [keys.hashes[r] for r in rows], len(live), self.dim, blocks)
                manifest["segments"] = [{"name": name, "rows": len(live)}]
            else:
                manifest["segments"] = []
            fsync_dir(self.folder)
            write_manifest(self.folder, manifest)
            fresh = _load_state(self.folder)
            with self._rw.write():
                self._state = fresh
                self._flat = None
                self._hnsw = None
                self._reset_caches()
                self._fields = None
            self._collect_garbage()

    # internals -------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexStoreError(f"{self.folder} was opened read-only")

    def _reading(self, read: Callable[[], Any]) -> Any:
        """Run ``read``; a reader whose files a writer compacted away since it opened the index
        loads the current snapshot (whole commits, as always) and runs it again."""
        try:
            return read()
        except FileNotFoundError:
            if self.writable:
                raise
            fresh = _load_state(self.folder)
            with self._rw.write():
                self._state = fresh
                self._flat = None
                self._hnsw = None
                self._fields = None
                self._modalities = None
                self._reset_caches()
            return read()

    def _keys(self) -> _Keys:
        state = self._state
        with self._mutex:
            if state.keys is None:
                ids: list[str] = []
                hashes: list[str | None] = []
                for seg in state.segments:
                    seg_ids, seg_hashes = seg.keys()
                    ids.extend(seg_ids)
                    hashes.extend(seg_hashes)
                deleted = state.deleted.view()
                if len(state.deleted_rows):
                    row_of = {ids[row]: row for row in np.flatnonzero(~deleted).tolist()}
                else:
                    row_of = dict(zip(ids, range(len(ids))))
                state.keys = _Keys(ids, hashes, row_of)
            return state.keys

    def _apply(self, manifest, segment, ids, records, vectors, drop, deleted_rows) -> None:
        """Update the in-memory snapshot after a commit, without re-reading files."""
        state, keys = self._state, self._keys()
        state.manifest = manifest
        if self._modalities is not None:  # the dropped rows' lines are still on disk: read only those
            dropped = [r.get("modality") or "" for r in state.records_at(drop).values()]
            with self._mutex:
                self._modalities.subtract(dropped)
                self._modalities.update(r.get("modality") or "" for r in records)
        if drop:
            deleted = state.deleted.view()
            for row in drop:
                deleted[row] = True
                keys.row_of.pop(keys.ids[row], None)
            state.deleted_rows = deleted_rows
        if segment is not None:
            base = state.rows
            state.segments.append(segment)
            state.starts.append(base)
            state.rows += segment.rows
            state.deleted.grow(segment.rows)
            keys.ids.extend(ids)
            keys.hashes.extend(r.get("hash") for r in records)
            for j, item_id in enumerate(ids):
                keys.row_of[item_id] = base + j
            if self._flat is not None:
                self._flat.add(vectors)
            if self._fields is not None:
                for r in records:
                    self._fields.update((r.get("meta") or {}).keys())
        self._reset_caches()

    def _reset_caches(self) -> None:
        with self._mutex:
            self._masks.clear()
            self._subsets.clear()

    def _mask(self, filter: Filter | None) -> np.ndarray | None:
        """Bool mask of rows a search may return, or None for "every row"."""
        state = self._state
        if filter is None and not len(state.deleted_rows):
            return None
        with self._mutex:
            cached = self._masks.get(filter)
            if cached is not None:
                self._masks.move_to_end(filter)
                return cached
        mask = ~state.deleted.view()
        if filter is not None:
            fields: set[str] = set()
            for row, line in state.live_lines():
                record = json.loads(line)
                fields.update((record.get("meta") or {}).keys())
                if not filter.accepts(record):
                    mask[row] = False
        with self._mutex:
            if filter is not None:
                self._fields = fields
            self._masks[filter] = mask
            while len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        return mask

    def _flat_index(self):
        """FAISS's flat index over every row: the one in-memory copy of the vectors."""
        import faiss

        with self._mutex:
            if self._flat is None:
                index = faiss.IndexFlatIP(self.dim)
                # sized once and filled in place: adding segment by segment would grow the buffer
                # by doubling, with old and new buffers both resident at each step
                rows = self._state.rows
                index.codes.resize(rows * self.dim * 4)
                index.ntotal = rows
                matrix = _matrix(index, self.dim)
                for seg in self._state.segments:
                    matrix[seg.start:seg.start + seg.rows] = seg.vectors()
                self._flat = index
            return self._flat

    def _graph(self, info: dict[str, Any]):
        """The HNSW graph ``info`` names, searching the flat index's vectors."""
        with self._mutex:
            if self._hnsw is not None and self._hnsw[0] == info["file"]:
                return self._hnsw[1]
        flat = self._flat_index()
        graph = _read_graph(self.folder / info["file"])
        graph.storage = flat
        with self._mutex:
            self._hnsw = (info["file"], graph)
        return graph

    def _search_flat(self, queries, k, mask, filter=None):
        import faiss

        index = self._flat_index()
        if mask is None:
            return index.search(queries, min(k, index.ntotal))
        n_ok = int(mask.sum())
        if n_ok == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        kk = min(k, n_ok)
        if n_ok <= SUBSET_SHARE * len(mask):
            # few rows pass: a small brute force over just them beats scanning everything
            rows, subset = self._subset(index, mask, filter)
            scores, local = faiss.knn(queries, subset, kk, metric=faiss.METRIC_INNER_PRODUCT)
            return scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1)
        params = faiss.SearchParameters(sel=_bitmap_selector(mask))
        return index.search(queries, kk, params=params)

    def _subset(self, index, mask, filter):
        """The rows a filter lets through and their vectors, kept while such copies stay small."""
        with self._mutex:
            hit = self._subsets.get(filter)
            if hit is not None:
                self._subsets.move_to_end(filter)
                return hit
        rows = np.flatnonzero(mask)
        entry = (rows, np.ascontiguousarray(_matrix(index, self.dim)[rows]))
        budget = SUBSET_BUDGET * index.ntotal * self.dim * 4
        with self._mutex:
            self._subsets[filter] = entry
            while sum(v.nbytes for _, v in self._subsets.values()) > budget and len(self._subsets) > 1:
                self._subsets.popitem(last=False)
        return entry

    def _search_hnsw(self, graph, covered, queries, k, mask, ef_search, filter=None):
        import faiss

        ef = max(int(ef_search or self.config.get("ef_search", 128)), k)
        n_rows = self._state.rows
        n_ok = len(self) if mask is None else int(mask.sum())
        if mask is not None and _filtered_walk_runs_dry(n_ok, len(mask), k, ef):
            return self._search_flat(queries, k, mask, filter)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if mask is not None:
            params.sel = _bitmap_selector(mask[:covered])
        scores, rows = graph.search(queries, min(k, covered), params=params)
        if covered < n_rows:  # rows added since the graph was built: search them exactly
            tail = _matrix(self._flat_index(), self.dim)[covered:]
            tail_rows = np.arange(covered, n_rows)
            if mask is not None:
                keep = mask[covered:]
                tail, tail_rows = tail[keep], tail_rows[keep]
            if len(tail_rows):
                ts, tl = faiss.knn(queries, np.ascontiguousarray(tail), min(k, len(tail_rows)),
                                   metric=faiss.METRIC_INNER_PRODUCT)
                tr = np.where(tl >= 0, tail_rows[np.maximum(tl, 0)], -1)
                scores = np.concatenate([scores, ts], axis=1)
                rows = np.concatenate([rows, tr], axis=1)
                order = np.argsort(-np.where(rows >= 0, scores, -np.inf), axis=1, kind="stable")[:, :k]
                scores = np.take_along_axis(scores, order, 1)
                rows = np.take_along_axis(rows, order, 1)
        if mask is not None:
            # The graph walk can still run dry (or meet deleted rows only); a query that came back
            # with fewer than the k rows that pass is answered exactly instead.
            short = np.flatnonzero((rows >= 0).sum(axis=1) < min(k, n_ok))
            if len(short):
                es, er = self._search_flat(np.ascontiguousarray(queries[short]), k, mask, filter)
                scores, rows = list(scores), list(rows)
                for j, q in enumerate(short):
                    scores[q], rows[q] = es[j], er[j]
        return scores, rows

    def _collect_garbage(self) -> None:
        """Remove files no manifest names (left by a commit that was killed)."""
        manifest = self._state.manifest
        keep = {MANIFEST}
        for seg in manifest["segments"]:
            keep |= {seg["name"] + ".npy", seg["name"] + ".jsonl", seg["name"] + ".keys"}
        if manifest.get("deleted"):
            keep.add(manifest["deleted"])
        if manifest.get("hnsw"):
            keep.add(manifest["hnsw"]["file"])
        for path in self.folder.iterdir():
            if (_DATA_FILE.match(path.name) or path.name == MANIFEST + ".tmp") and path.name not in keep:
                try:
                    path.unlink()
                except OSError:
                    pass


def _matrix(flat, dim: int) -> np.ndarray:
    """The flat index's vectors as an array (a view: valid until the index next grows)."""
    import faiss

    if flat.ntotal == 0:
        return np.zeros((0, dim), np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * dim).reshape(flat.ntotal, dim)


def _read_graph(path: Path):
    """An HNSW graph from its file, with no storage (it is given the store's flat index)."""
    import faiss

    graph = faiss.read_index(str(path))
    if graph.storage is not None:  # written by an older umr with its own copy of the vectors
        _take_storage(graph)
    graph.own_fields = False
    return graph


def _take_storage(graph):
    """Detach the storage a graph owns and return it, owned by Python (freed with the object)."""
    storage = graph.storage
    graph.own_fields = False
    storage.this.own(True)
    return storage


def _write_npy_int(path: Path, rows: np.ndarray) -> None:
    write_bytes_atomic(path, lambda handle: np.save(handle, np.asarray(rows, np.int64), allow_pickle=False),
                       sync_dir=False)


#: a filtered HNSW walk passing fewer than this share of rows is replaced by a brute force
_HNSW_FILTER_MIN_SHARE = 0.2


def _filtered_walk_runs_dry(n_ok: int, n_rows: int, k: int, ef: int) -> bool:
    """Whether a filtered HNSW search should brute-force the rows that pass instead.

    With a selector FAISS still walks every node but keeps only those that pass, so it meets
    about ``share * (nodes visited, a small multiple of ef)`` passing rows: once ``share * ef``
    drops below ``k`` it returns fewer than ``k`` results, and the wrong ones. Brute force then:
    whenever at most ``k * ef`` rows pass (as cheap as the walk itself), or the share passing is
    below ``k / ef`` (capped at 20%, so a loose filter keeps the graph's speed).
    """
    if n_ok <= k * ef:
        return True
    return n_ok < n_rows * min(_HNSW_FILTER_MIN_SHARE, k / ef)


def _bitmap_selector(mask: np.ndarray):
    import faiss

    bits = np.packbits(mask.astype(np.uint8), bitorder="little")
    selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    selector.buffer = bits  # the selector points into it: keep it alive as long as the selector
    return selector


def _load_state(folder: Path, attempts: int = 10) -> _State:
    """Map the snapshot the manifest names; retry if a writer swapped it under our feet."""
    last: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.01 * attempt)
        manifest = read_manifest(folder)
        if manifest.get("format") != FORMAT:
            raise IndexStoreError(f"{folder}: index format {manifest.get('format')} is not supported "
                                  f"(this umr reads format {FORMAT})")
        try:
            return _load_files(folder, manifest)
        except FileNotFoundError as exc:  # a writer collected a file of an older manifest
            last = exc
            continue
    raise IndexStoreError(f"{folder}: the index kept changing while being read ({last})")


def _load_files(folder: Path, manifest: dict[str, Any]) -> _State:
    dim = int(manifest["dim"])
    # the deleted-rows file is the only one a writer replaces: read it first
    deleted_rows = (np.load(folder / manifest["deleted"], allow_pickle=False).astype(np.int64)
                    if manifest.get("deleted") else np.zeros(0, np.int64))
    state = _State(manifest, deleted_rows=deleted_rows)
    for seg in manifest["segments"]:
        state.segments.append(_Segment(folder, seg["name"], seg["rows"], state.rows, dim))
        state.starts.append(state.rows)
        state.rows += int(seg["rows"])
    state.deleted.grow(state.rows)
    state.deleted.view()[deleted_rows] = True
    return state


def _acquire_lock(folder: Path):
    handle = open(folder / ".lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise IndexLocked(f"{folder} is being written by another process (umr index running?); "
                          f"wait for it to finish") from None
    return handle


def _release_lock(handle) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()
