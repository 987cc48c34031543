"""The embedded vector store: vectors and records persisted in one folder, crash-safe.

Layout of an index folder::

    manifest.json        the one source of truth, replaced atomically (write tmp, fsync, rename)
    seg-000001.npy       float32 vectors of one commit, never modified once written
    seg-000001.jsonl     one record per vector row (id, hash, modality, path, text, meta)
    seg-000001.keys      the ids and content hashes of those rows (JSON), read fast on open
    del-000007.npy       int64 global row numbers deleted (updates delete the old row)
    hnsw-000007.faiss    optional HNSW graph over the first ``rows`` global rows
    .lock                held (flock) by the one writer

A commit writes its new files, fsyncs them, then swaps the manifest. A process killed at any
moment leaves either the old or the new manifest, both pointing only at complete files; files a
dead commit left behind are not referenced and are removed by the next writer. Readers load
everything the manifest names into memory once, so a search never sees half a commit.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

MANIFEST = "manifest.json"
#: superseded deleted-rows files kept for readers still loading an older manifest
KEEP_SUPERSEDED = 16
FORMAT = 1
_DATA_FILE = re.compile(r"^(seg-\d+\.(npy|jsonl|keys)|del-\d+\.npy|hnsw-\d+\.faiss)(\.tmp)?$")


class IndexStoreError(RuntimeError):
    """A problem with an index folder (missing, unreadable, locked), said in one line."""


class IndexLocked(IndexStoreError):
    pass


# -- filters ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """Which records a search may return: modalities and metadata field values (all must hold).

    ``where`` maps a metadata field to a value or a list of accepted values. Values compare as
    stored, with no conversion: ``{"folder": 2020}`` matches the number 2020, not the string
    ``"2020"`` (say ``{"folder": ["2020", 2020]}`` to accept both). A dict value matches a stored
    JSON object equal to it (the FAISS store; Milvus refuses object values).
    """

    modalities: tuple[str, ...] | None = None
    where: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def make(cls, modality: "str | Sequence[str] | None" = None,
             where: dict[str, Any] | None = None) -> "Filter | None":
        from ..types import Modality

        mods = None
        if modality is not None:
            values = [modality] if isinstance(modality, str) else list(modality)
            mods = tuple(sorted({Modality.parse(m).value for m in values}))
        items = tuple(sorted((str(k), _freeze(v)) for k, v in (where or {}).items()))
        if mods is None and not items:
            return None
        return cls(mods, items)

    def accepts(self, record: dict[str, Any]) -> bool:
        if self.modalities is not None and record.get("modality") not in self.modalities:
            return False
        meta = record.get("meta") or {}
        for key, want in self.where:
            have = meta.get(key)
            if isinstance(want, tuple):
                if _freeze(have) not in want:
                    return False
            elif _freeze(have) != want:
                return False
        return True


@dataclass(frozen=True)
class _FrozenDict:
    """A dict made hashable, so it can sit in a :class:`Filter` (not a tuple: tuples mean "any of")."""

    items: tuple[tuple[str, Any], ...]


def _freeze(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return _FrozenDict(tuple(sorted((str(k), _freeze(v)) for k, v in value.items())))
    return value


# -- small file helpers ----------------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_bytes_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexStoreError(f"{folder} is not a umr index (no {MANIFEST}); build one with `umr index`") from None
    except (OSError, ValueError) as exc:
        raise IndexStoreError(f"{path}: cannot read the index manifest ({exc})") from None


# -- the store -------------------------------------------------------------------------------------


@dataclass
class Hit:
    score: float
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record["id"]


class _Records:
    """Records by row, parsed from their JSON line on first use (opening 1M rows stays fast)."""

    def __init__(self) -> None:
        self._raw: list[bytes | None] = []
        self._parsed: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, row: int) -> dict[str, Any]:
        record = self._parsed.get(row)
        if record is None:
            record = json.loads(self._raw[row])
            self._parsed[row] = record
        return record

    def __iter__(self):
        for row in range(len(self._raw)):
            yield self[row]

    def extend_raw(self, lines: list[bytes]) -> None:
        self._raw.extend(lines)

    def extend(self, records: Sequence[dict[str, Any]]) -> None:
        base = len(self._raw)
        self._raw.extend([None] * len(records))
        for j, record in enumerate(records):
            self._parsed[base + j] = record


@dataclass
class _State:
    """One consistent snapshot: what a manifest names, loaded."""

    manifest: dict[str, Any]
    records: _Records = field(default_factory=_Records)
    ids: list[str] = field(default_factory=list)
    hashes: list[str | None] = field(default_factory=list)
    vectors: np.ndarray | None = None
    deleted: np.ndarray | None = None  # bool per global row
    row_of: dict[str, int] = field(default_factory=dict)  # live id -> global row


class FlatStore:
    """Vectors + records in a folder; exact inner-product search (FAISS), HNSW optional.

    Use :meth:`create` / :meth:`open`; writes need ``writable=True`` (one writer at a time).
    """

    backend = "faiss"

    def __init__(self, folder: Path, state: _State, *, writable: bool, lock_handle=None):
        self.folder = Path(folder)
        self._state = state
        self.writable = writable
        self._lock_handle = lock_handle
        self._faiss_index = None
        self._hnsw = None
        self._filter_cache: dict[Filter, Any] = {}
        self._subset_cache: dict[Filter | None, Any] = {}
        self._superseded: list[str] = []
        self._mutex = threading.Lock()

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
        _write_bytes_durably(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(folder)
        state = _State(manifest, _Records(), [], [], np.zeros((0, int(dim)), np.float32), np.zeros(0, bool), {})
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

    def __len__(self) -> int:
        return len(self._state.row_of)

    def ids(self) -> list[str]:
        return list(self._state.row_of)

    def hashes(self) -> dict[str, str]:
        hashes = self._state.hashes
        return {i: hashes[r] for i, r in self._state.row_of.items()}

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        records, row_of = self._state.records, self._state.row_of
        return [records[row_of[i]] if i in row_of else None for i in ids]

    def records(self) -> Iterable[dict[str, Any]]:
        records = self._state.records
        for row in self._state.row_of.values():
            yield records[row]

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None,
               method: str | None = None, ef_search: int | None = None) -> list[list[Hit]]:
        """Top-``k`` live records per query by inner product, best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        state = self._state
        n_rows = len(state.records)
        if n_rows == 0 or k <= 0:
            return [[] for _ in queries]
        method = method or self.config.get("method", "exact")
        selector_mask = self._mask(filter)
        graph_ok = method == "hnsw" and state.manifest.get("hnsw")
        if graph_ok:
            try:
                self._load_hnsw(state.manifest["hnsw"])
            except FileNotFoundError:  # a writer replaced the graph since this snapshot: search exactly
                graph_ok = False
        if graph_ok:
            scores, rows = self._search_hnsw(queries, k, selector_mask, ef_search, filter)
        else:
            scores, rows = self._search_flat(queries, k, selector_mask, filter)
        out = []
        for qs, qr in zip(scores, rows):
            out.append([Hit(float(s), state.records[r]) for s, r in zip(qs, qr) if r >= 0])
        return out

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
        state = self._state
        manifest = json.loads(json.dumps(state.manifest))
        drop = {state.row_of[i] for i in ids if i in state.row_of}
        drop |= {state.row_of[i] for i in delete_ids if i in state.row_of and i not in set(ids)}
        if not records and not drop:
            return
        number = manifest["next_file"]
        manifest["next_file"] = number + 1
        manifest["version"] += 1
        if records:
            name = f"seg-{number:06d}"
            _write_segment(self.folder, name, records, vectors)
            manifest["segments"].append({"name": name, "rows": len(records)})
        if drop:
            old = _deleted_rows(state)
            rows = np.union1d(old, np.fromiter(drop, dtype=np.int64)).astype(np.int64)
            del_name = f"del-{number:06d}.npy"
            _write_bytes_durably(self.folder / del_name, _npy_bytes(rows))
            manifest["deleted"] = del_name
        _fsync_dir(self.folder)
        superseded = state.manifest.get("deleted")
        self._swap_manifest(manifest)
        self._apply(manifest, records, vectors, drop)
        if superseded and superseded != manifest.get("deleted"):
            # Readers load the deleted-rows file right after the manifest; keeping the last few
            # superseded ones gives a reader that read an older manifest time to finish.
            self._superseded.append(superseded)
            while len(self._superseded) > KEEP_SUPERSEDED:
                (self.folder / self._superseded.pop(0)).unlink(missing_ok=True)

    def delete(self, ids: Iterable[str]) -> int:
        ids = [i for i in ids if i in self._state.row_of]
        self.commit([], np.zeros((0, self.dim), np.float32), delete_ids=ids)
        return len(ids)

    def set_config(self, config: dict[str, Any]) -> None:
        self._require_writable()
        manifest = json.loads(json.dumps(self._state.manifest))
        manifest["config"] = config
        manifest["version"] += 1
        self._swap_manifest(manifest)
        self._state.manifest = manifest

    def build_hnsw(self, *, m: int = 32, ef_construction: int = 100, progress=None) -> None:
        """Bring the persisted HNSW graph up to date with every row (adding only new rows)."""
        import faiss

        self._require_writable()
        state = self._state
        n_rows = len(state.records)
        info = state.manifest.get("hnsw")
        if info and info["rows"] == n_rows:
            return
        if info:
            graph = self._load_hnsw(info)
            start = info["rows"]
        else:
            graph = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
            graph.hnsw.efConstruction = ef_construction
            start = 0
        step = 50_000
        for begin in range(start, n_rows, step):
            graph.add(np.ascontiguousarray(state.vectors[begin:begin + step]))
            if progress:
                progress(min(begin + step, n_rows) - start)
        manifest = json.loads(json.dumps(state.manifest))
        number = manifest["next_file"]
        manifest["next_file"] = number + 1
        manifest["version"] += 1
        name = f"hnsw-{number:06d}.faiss"
        _write_bytes_durably(self.folder / name, faiss.serialize_index(graph).tobytes())
        _fsync_dir(self.folder)
        manifest["hnsw"] = {"file": name, "rows": n_rows, "m": m, "ef_construction": ef_construction}
        self._swap_manifest(manifest)
        state.manifest = manifest
        self._hnsw = graph

    def compact(self) -> None:
        """Rewrite live rows into one segment, dropping deleted rows and the HNSW graph."""
        self._require_writable()
        state = self._state
        live = sorted(state.row_of.values())
        if len(live) == len(state.records):
            return
        manifest = json.loads(json.dumps(state.manifest))
        number = manifest["next_file"]
        manifest.update(next_file=number + 1, version=manifest["version"] + 1, deleted=None, hnsw=None)
        name = f"seg-{number:06d}"
        records = [state.records[r] for r in live]
        vectors = np.ascontiguousarray(state.vectors[live])
        _write_segment(self.folder, name, records, vectors)
        manifest["segments"] = [{"name": name, "rows": len(records)}] if records else []
        _fsync_dir(self.folder)
        self._swap_manifest(manifest)
        self._state = _load_state(self.folder)
        self._reset_caches()
        self._collect_garbage()

    # internals -------------------------------------------------------------------------------

    def _require_writable(self) -> None:
        if not self.writable:
            raise IndexStoreError(f"{self.folder} was opened read-only")

    def _swap_manifest(self, manifest: dict[str, Any]) -> None:
        _write_bytes_durably(self.folder / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(self.folder)

    def _apply(self, manifest, records, vectors, drop) -> None:
        """Update the in-memory snapshot after a commit, without re-reading files."""
        state = self._state
        base = len(state.records)
        state.manifest = manifest
        if drop:
            for row in drop:
                state.deleted[row] = True
                state.row_of.pop(state.ids[row], None)
        if len(records):
            state.records.extend(records)
            state.ids.extend(str(r["id"]) for r in records)
            state.hashes.extend(r.get("hash") for r in records)
            state.vectors = vectors if state.vectors is None or not len(state.vectors) else \
                np.concatenate([state.vectors, vectors])
            state.deleted = np.concatenate([state.deleted, np.zeros(len(records), bool)])
            for j, r in enumerate(records):
                state.row_of[str(r["id"])] = base + j
        self._reset_caches()

    def _reset_caches(self) -> None:
        self._faiss_index = None
        self._filter_cache = {}
        self._subset_cache = {}
        if not self._state.manifest.get("hnsw"):
            self._hnsw = None

    def _mask(self, filter: Filter | None) -> np.ndarray | None:
        """Bool mask of rows a search may return, or None for "every row"."""
        state = self._state
        has_deleted = bool(state.deleted is not None and state.deleted.any())
        if filter is None and not has_deleted:
            return None
        with self._mutex:
            cached = self._filter_cache.get(filter)
            if cached is not None:
                return cached
            mask = ~state.deleted
            if filter is not None:
                mask &= np.fromiter((filter.accepts(r) for r in state.records), dtype=bool,
                                    count=len(state.records))
            self._filter_cache[filter] = mask
            return mask

    def _flat(self):
        import faiss

        with self._mutex:
            if self._faiss_index is None:
                index = faiss.IndexFlatIP(self.dim)
                if self._state.vectors is not None and len(self._state.vectors):
                    index.add(np.ascontiguousarray(self._state.vectors))
                self._faiss_index = index
            return self._faiss_index

    def _search_flat(self, queries, k, mask, filter=None):
        import faiss

        index = self._flat()
        if mask is None:
            return index.search(queries, min(k, index.ntotal))
        n_ok = int(mask.sum())
        if n_ok == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        kk = min(k, n_ok)
        if n_ok < 0.5 * len(mask):
            # few rows pass: a small brute force over just them beats scanning everything
            rows, subset = self._subset(mask, filter)
            scores, local = faiss.knn(queries, subset, kk, metric=faiss.METRIC_INNER_PRODUCT)
            return scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1)
        params = faiss.SearchParameters(sel=_bitmap_selector(mask))
        return index.search(queries, kk, params=params)

    def _subset(self, mask, filter):
        """The rows a filter lets through and their vectors, kept for the next query (2 filters)."""
        with self._mutex:
            hit = self._subset_cache.get(filter)
            if hit is not None:
                return hit
        rows = np.flatnonzero(mask)
        entry = (rows, np.ascontiguousarray(self._state.vectors[rows]))
        with self._mutex:
            if len(self._subset_cache) >= 2:
                self._subset_cache.pop(next(iter(self._subset_cache)))
            self._subset_cache[filter] = entry
        return entry

    def _load_hnsw(self, info):
        import faiss

        if self._hnsw is None:
            data = np.fromfile(self.folder / info["file"], dtype=np.uint8)
            self._hnsw = faiss.deserialize_index(data)
        return self._hnsw

    def _search_hnsw(self, queries, k, mask, ef_search, filter=None):
        import faiss

        info = self._state.manifest["hnsw"]
        graph = self._load_hnsw(info)
        covered = info["rows"]
        ef = max(int(ef_search or self.config.get("ef_search", 128)), k)
        n_ok = len(self._state.records) if mask is None else int(mask.sum())
        if mask is not None and _filtered_walk_runs_dry(n_ok, len(mask), k, ef):
            return self._search_flat(queries, k, mask, filter)
        sub_mask = None if mask is None else mask[:covered]
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if sub_mask is not None:
            params.sel = _bitmap_selector(sub_mask)
        kk = min(k, covered)
        scores, rows = graph.search(queries, kk, params=params)
        n_rows = len(self._state.records)
        if covered < n_rows:  # rows added since the graph was built: search them exactly
            tail = np.ascontiguousarray(self._state.vectors[covered:])
            tail_rows = np.arange(covered, n_rows)
            if mask is not None:
                keep = mask[covered:]
                tail, tail_rows = np.ascontiguousarray(tail[keep]), tail_rows[keep]
            if len(tail_rows):
                ts, tl = faiss.knn(queries, tail, min(k, len(tail_rows)), metric=faiss.METRIC_INNER_PRODUCT)
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


def _deleted_rows(state: _State) -> np.ndarray:
    if state.deleted is None:
        return np.zeros(0, np.int64)
    return np.flatnonzero(state.deleted).astype(np.int64)


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
    selector._bits = bits  # keep the buffer alive as long as the selector
    return selector


def _load_state(folder: Path, attempts: int = 10) -> _State:
    """Load the snapshot the manifest names; retry if a writer swapped it under our feet."""
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


def _write_segment(folder: Path, name: str, records: Sequence[dict[str, Any]], vectors: np.ndarray) -> None:
    lines = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    keys = json.dumps([[str(r["id"]) for r in records], [r.get("hash") for r in records]], ensure_ascii=False)
    _write_bytes_durably(folder / f"{name}.jsonl", lines.encode("utf-8"))
    _write_bytes_durably(folder / f"{name}.keys", keys.encode("utf-8"))
    _write_bytes_durably(folder / f"{name}.npy", _npy_bytes(vectors))


def _load_files(folder: Path, manifest: dict[str, Any]) -> _State:
    dim = int(manifest["dim"])
    records = _Records()
    ids: list[str] = []
    hashes: list[str | None] = []
    blocks = []
    # the deleted-rows file is the only one a writer replaces: read it first
    deleted_rows = np.load(folder / manifest["deleted"], allow_pickle=False) if manifest.get("deleted") else None
    for seg in manifest["segments"]:
        vecs = np.load(folder / f"{seg['name']}.npy", allow_pickle=False)
        lines = (folder / f"{seg['name']}.jsonl").read_bytes().split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        seg_ids, seg_hashes = json.loads((folder / f"{seg['name']}.keys").read_bytes())
        if not (len(lines) == len(seg_ids) == seg["rows"]) or vecs.shape != (seg["rows"], dim):
            raise IndexStoreError(f"{folder}: segment {seg['name']} does not match the manifest "
                              f"({len(lines)} records, vectors {vecs.shape}, expected {seg['rows']})")
        records.extend_raw(lines)
        ids.extend(seg_ids)
        hashes.extend(seg_hashes)
        blocks.append(vecs)
    vectors = np.concatenate(blocks) if len(blocks) > 1 else (blocks[0] if blocks else np.zeros((0, dim), np.float32))
    deleted = np.zeros(len(ids), dtype=bool)
    if deleted_rows is not None:
        deleted[deleted_rows] = True
    if deleted.any():
        row_of = {ids[row]: row for row in np.flatnonzero(~deleted).tolist()}
    else:
        row_of = dict(zip(ids, range(len(ids))))
    return _State(manifest, records, ids, hashes, np.ascontiguousarray(vectors, dtype=np.float32), deleted, row_of)


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
