"""The :class:`FlatStore` facade: the :class:`~umr.index.base.VectorStore` contract over the
package's parts. It holds the current snapshot (:mod:`.manifest`) and the locks (:mod:`.locks`),
writes commits (:mod:`.segments`), asks :mod:`.planning` for the rows a search returns and reads
their records back, and leaves compaction and garbage collection to :mod:`.maintenance`.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ...core.atomic import fsync_dir
from ..base import MANIFEST, Filter, Hit, IndexStoreError, VectorStore, check_search_args, json_line, write_manifest
from ..compact import check_quantize, check_rescore_k, new_record
from .catalog import Catalog, fields_of, modality_of
from .hnsw import graph_name, grow_graph
from .locks import ReadWriteLock, acquire_writer_lock, release_writer_lock
from .maintenance import Superseded, collect_garbage, write_compacted
from .manifest import Keys, Snapshot, load_snapshot, new_manifest, next_manifest, next_version
from .planning import Searcher
from .segments import Segment, deleted_name, segment_name, write_deleted, write_segment
from .vectors import matrix


class FlatStore(VectorStore):
    """Vectors + records in a folder; exact inner-product search (FAISS), HNSW optional.

    Use :meth:`create` / :meth:`open`; writes need ``writable=True`` (one writer at a time).
    ``config["quantize"]`` (``int8`` or ``binary``, at creation) keeps compact codes in memory and
    the float32 rows on disk for rescoring (:mod:`umr.index.compact`).
    """

    backend = "faiss"

    def __init__(self, folder: Path, snapshot: Snapshot, *, writable: bool, lock_handle=None):
        self.folder = Path(folder)
        self._state = snapshot
        self.writable = writable
        self._lock_handle = lock_handle
        self._catalog = Catalog()
        self._searcher = Searcher(self.folder, self.dim, self._catalog.keep_fields)
        self._superseded = Superseded(self.folder)
        self._keys_lock = threading.Lock()  # one thread loads the ids of a snapshot
        self._rw = ReadWriteLock()  # searches vs. in-memory changes of a commit
        self._writing = threading.Lock()  # one commit at a time

    # construction ----------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, *, dim: int, config: dict[str, Any]) -> "FlatStore":
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        lock = acquire_writer_lock(folder)
        if (folder / MANIFEST).exists():
            release_writer_lock(lock)
            raise IndexStoreError(f"{folder} already holds an index")
        kind = config.get("quantize")
        try:
            check_quantize(kind)
        except ValueError:
            release_writer_lock(lock)
            raise
        manifest = new_manifest(dim, config, compact=new_record(kind) if kind else None)
        write_manifest(folder, manifest)
        return cls(folder, Snapshot(manifest, keys=Keys([], [], {})), writable=True, lock_handle=lock)

    @classmethod
    def open(cls, folder: str | Path, *, writable: bool = False) -> "FlatStore":
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexStoreError(f"no index folder {folder}")
        lock = acquire_writer_lock(folder) if writable else None
        try:
            store = cls(folder, load_snapshot(folder), writable=writable, lock_handle=lock)
            if writable:
                collect_garbage(folder, store.manifest)
            return store
        except BaseException:
            if lock is not None:
                release_writer_lock(lock)
            raise

    def close(self) -> None:
        if self._lock_handle is not None:
            release_writer_lock(self._lock_handle)
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
    def quantize(self) -> str | None:
        """``int8`` or ``binary`` for a quantised store, None for float32."""
        compact = self._state.manifest.get("compact")
        return compact["kind"] if compact else None

    @property
    def rows(self) -> int:
        """Rows held, live or deleted (a replaced item keeps its old row until :meth:`compact`)."""
        return self._state.rows

    def __len__(self) -> int:
        return self._state.live

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
        known = self._catalog.fields()
        if known is not None:
            return known

        def read():
            fields: set[str] = set()
            with self._rw.read():
                for _, line in self._state.live_lines():
                    fields.update(fields_of(json.loads(line)))
            return fields

        fields = self._reading(read)
        self._catalog.keep_fields(fields)
        return set(fields)

    def modality_counts(self) -> dict[str, int]:
        known = self._catalog.modality_counts()
        if known is not None:
            return known

        def read():
            with self._rw.read():  # no commit between counting and keeping the count
                return self._catalog.keep_modalities(
                    Counter(modality_of(json.loads(line)) for _, line in self._state.live_lines()))

        return self._reading(read)

    def check_id(self, item_id: str) -> str | None:
        return None  # any text is stored exactly (JSON escapes what UTF-8 cannot hold)

    def hnsw_graph(self):
        """The persisted HNSW graph (a FAISS index searching this store's vectors, or a quantised
        store's codes), or None."""
        info = self._state.manifest.get("hnsw")
        if not info:
            return None
        if self.quantize is not None:  # a graph over the compact codes
            return self._searcher.compact(self._state).graph(info["file"], info["rows"]).index
        return self._searcher.graph(info, self._state)

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None,
               method: str | None = None, ef_search: int | None = None,
               rescore_k: int | None = None) -> list[list[Hit]]:
        """Top-``k`` live records per query by inner product, best first. A quantised store
        rescores ``rescore_k`` candidates (default: the index's, else ``max(20k, 200)``; 0: none)."""
        check_search_args(k, ef_search)
        check_rescore_k(rescore_k)
        if rescore_k is not None and self.quantize is None:
            raise ValueError("rescore_k is for a quantised index (--quantize int8|binary); this one holds "
                             "float32 vectors and scores them exactly")
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self._reading(lambda: self._search(queries, k, filter, method, ef_search, rescore_k))

    def _search(self, queries, k, filter, method, ef_search, rescore_k) -> list[list[Hit]]:
        with self._rw.read():
            state = self._state
            if len(self) == 0:
                return [[] for _ in queries]
            scores, rows = self._searcher.search(state, queries, k, filter,
                                                 method or self.config.get("method", "exact"),
                                                 ef_search or self.config.get("ef_search", 128),
                                                 rescore_k if rescore_k is not None else self.config.get("rescore_k"))
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
            manifest, number = next_manifest(state.manifest)
            name = segment_name(number)
            hashes = [r.get("hash") for r in records]
            compact = state.manifest.get("compact")
            written = None
            if records:
                if compact is not None:  # the vectors go to the compact files, the records to the segment
                    written = self._searcher.compact(state).append(vectors, number)
                    manifest["compact"] = written.record
                write_segment(self.folder, name, lines, ids, hashes, len(vectors), self.dim,
                              None if compact is not None else [vectors])
                manifest["segments"].append({"name": name, "rows": len(records)})
            deleted_rows = state.deleted_rows
            if drop:
                deleted_rows = np.union1d(deleted_rows, np.fromiter(drop, np.int64, len(drop)))
                manifest["deleted"] = deleted_name(number)
                write_deleted(self.folder / manifest["deleted"], deleted_rows)
            fsync_dir(self.folder)
            superseded = state.manifest.get("deleted")
            write_manifest(self.folder, manifest)
            segment = (Segment(self.folder, name, len(records), state.rows, self.dim, vectors=compact is None)
                       if records else None)
            with self._rw.write():
                self._catalog.committed(records, lambda: state.records_at(drop).values())
                state.apply(manifest, segment, ids, hashes, drop, deleted_rows)
                if segment is not None:
                    self._searcher.append(vectors, written)
                self._searcher.forget_filters()
            if superseded and superseded != manifest.get("deleted"):
                self._superseded.retire(superseded)
            if written is not None and compact["codes"] and compact["codes"] != written.record["codes"]:
                self._superseded.retire(compact["codes"])  # an int8 re-fit wrote every code anew

    def delete(self, ids: Iterable[str]) -> int:
        row_of = self._keys().row_of
        ids = [i for i in ids if i in row_of]
        self.commit([], np.zeros((0, self.dim), np.float32), delete_ids=ids)
        return len(ids)

    def set_config(self, config: dict[str, Any]) -> None:
        self._require_writable()
        with self._writing:
            manifest = next_version(self._state.manifest)
            manifest["config"] = config
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

    def build_hnsw(self, *, m: int = 32, ef_construction: int = 100,
                   progress: Callable[[int], Any] | None = None) -> None:
        """Bring the persisted HNSW graph up to date with every row (adding only new rows)."""
        self._require_writable()
        with self._writing:
            state = self._state
            info = state.manifest.get("hnsw")
            if info and info["rows"] == state.rows:
                return
            manifest, number = next_manifest(state.manifest)
            name = graph_name(number)
            if self.quantize is not None:
                compact = self._searcher.compact(state)
                graph = compact.grow_graph(info, m=m, ef_construction=ef_construction, target=self.folder / name,
                                           progress=progress)
                keep = compact.keep_graph
            else:
                graph = grow_graph(self.folder, info, self._searcher.flat_index(state), self.dim, m=m,
                                   ef_construction=ef_construction, target=self.folder / name, progress=progress)
                keep = partial(self._searcher.keep_graph, name)
            manifest["hnsw"] = {"file": name, "rows": state.rows, "m": m, "ef_construction": ef_construction,
                                "storage": "codes" if self.quantize else "segments"}
            write_manifest(self.folder, manifest)
            with self._rw.write():
                state.manifest = manifest
                keep(graph)

    def compact(self) -> None:
        """Rewrite live rows into one segment, dropping deleted rows and the HNSW graph; a
        quantised store's compact files are rewritten too, an int8 codec re-fitted on the live rows."""
        self._require_writable()
        with self._writing:
            state = self._state
            if not len(state.deleted_rows) and not self._calibration_stale():
                return
            if self.quantize is not None:
                manifest = write_compacted(self.folder, state, self._keys(), self.dim, None,
                                           self._searcher.compact(state))
            else:
                manifest = write_compacted(self.folder, state, self._keys(), self.dim,
                                           lambda: matrix(self._searcher.flat_index(state), self.dim))
            fsync_dir(self.folder)
            write_manifest(self.folder, manifest)
            self._adopt(load_snapshot(self.folder), keep_modalities=True)
            collect_garbage(self.folder, manifest)

    # internals -------------------------------------------------------------------------------

    def _calibration_stale(self) -> bool:
        """Whether an int8 store's codec was fitted on fewer rows than it holds (compaction re-fits it)."""
        compact = self._state.manifest.get("compact")
        return bool(compact and compact.get("codec") and compact["codec"]["rows"] < self._state.rows)

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
            self._adopt(load_snapshot(self.folder), keep_modalities=False)
            return read()

    def _adopt(self, snapshot: Snapshot, *, keep_modalities: bool) -> None:
        """Map ``snapshot`` from now on, dropping what was derived from the old one."""
        with self._rw.write():
            self._state = snapshot
            self._searcher.forget()
            self._catalog.forget(modalities=not keep_modalities)

    def _keys(self) -> Keys:
        state = self._state
        with self._keys_lock:
            return state.read_keys()
