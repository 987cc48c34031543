"""The embedded store of a late-interaction index: every item's token vectors stored once, in
segments of flat files that are memory-mapped for search.

Layout of the index folder (``backend: "multivector"`` in ``manifest.json``)::

    manifest.json            the one source of truth: config, token storage, segments, tombstones
    muvera.npz               the MUVERA encoder (``method: muvera`` only), fixed at creation
    segments/g000001/        one per commit: codes.npy (n_tokens, code_width), offsets.npy (n + 1),
                             records.jsonl (one record per item), fde.npy (muvera only)

Crash safety is the single-vector store's rule: a commit writes its segment into a temporary
folder, fsyncs it, renames it into place, then replaces the manifest atomically
(:mod:`umr.core.atomic`). A run killed at any point leaves the previous manifest, which names only
complete segments; an unlisted segment folder is debris, removed by the next writer. Upserts go to
the newest segment (a later segment's row wins over an earlier one of the same id); a deletion is
a tombstone ``id -> generation`` that hides the id's rows in older segments. :meth:`compact` writes
the live rows into one segment and drops the tombstones.

Search is exact MaxSim (:func:`~umr.core.multivector.maxsim.maxsim_topk`, segment by segment,
filters and dead rows masked) or, with ``method="muvera"``, the MUVERA fixed-dimensional encodings
of the documents searched for ``depth`` candidates, reranked by exact MaxSim.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ...core.atomic import atomic_path, fsync_dir, replace_durably
from ...core.multivector.encoding import BinaryEncoding, Float16Encoding, Float32Encoding, Int8Encoding, \
    TokenEncoding, encoding_from_state
from ...core.multivector.maxsim import maxsim_topk, rerank
from ...core.multivector.tokens import TokenVectors
from ...core.results import Hit
from ..base import MANIFEST, Filter, IndexLocked, IndexStoreError, json_line, read_manifest, write_manifest
from .muvera import Muvera
from .pooling import pool_tokens

BACKEND = "multivector"
#: how token vectors may be stored (``--token-storage``); float16 is the default
TOKEN_STORAGE = ("float16", "float32", "int8", "binary")
#: search methods of a multi-vector index (``--method``)
METHODS = ("exact", "muvera")
#: candidates a first stage hands the exact rerank per query, unless ``ef_search`` says otherwise
#: (benchmarks/late_interaction.py at 20k x 256 tokens, 200 queries: recall@10 0.841 at 100, 0.958 at 200)
DEFAULT_DEPTH = 200
#: the MUVERA encoder an index is created with (about 10 KB of float32 per document)
MUVERA_PARAMS = {"k_sim": 4, "d_proj": 16, "repetitions": 10, "seed": 0}
_LOCK = "write.lock"
_SEGMENTS = "segments"


def stored_vectors(vectors) -> "np.ndarray | list[np.ndarray]":
    """An embed result's vectors as a store takes them: one float32 matrix (single vectors) or a
    list of ``(n_tokens, dim)`` float32 matrices (multi-vector models)."""
    if isinstance(vectors, np.ndarray):
        return np.asarray(vectors, np.float32)
    return [np.asarray(v, np.float32) for v in vectors]


def join_vectors(batches: Sequence, dim: int) -> "np.ndarray | list[np.ndarray]":
    """Batches from :func:`stored_vectors` as one: rows stacked, or token matrices listed in order."""
    if not batches:
        return np.zeros((0, dim), np.float32)
    if isinstance(batches[0], np.ndarray):
        return np.concatenate(batches)
    return [matrix for batch in batches for matrix in batch]


def multi_vector_backend(backend: str) -> str:
    """The backend a late-interaction model is indexed in: this store, asked for as the embedded
    ``faiss`` default (or by its name); Milvus is refused in one line."""
    if backend not in ("faiss", BACKEND):
        raise ValueError(f"late-interaction (multi-vector) models are indexed in the embedded store only "
                         f"(--backend faiss); umr does not store token vectors in {backend} yet")
    return BACKEND


class _Segment:
    """One committed segment, memory-mapped."""

    def __init__(self, folder: Path, entry: dict[str, Any], encoding: TokenEncoding):
        self.name, self.generation = entry["name"], int(entry["generation"])
        self.codes = np.load(folder / "codes.npy", mmap_mode="r")
        self.offsets = np.load(folder / "offsets.npy")
        self.records = [json.loads(line) for line in (folder / "records.jsonl").read_text(encoding="utf-8").splitlines()]
        fde = folder / "fde.npy"
        self.fde = np.load(fde, mmap_mode="r") if fde.is_file() else None
        if len(self.records) != len(self.offsets) - 1:
            raise IndexStoreError(f"{folder}: {len(self.records)} records for {len(self.offsets) - 1} token matrices")
        self.docs = TokenVectors(self.codes, self.offsets, encoding)


class MultiVectorStore:
    """Token vectors with their records, by id (the :class:`~umr.index.base.VectorStore` contract
    with lists of ``(n_tokens, dim)`` matrices where single-vector stores take rows)."""

    backend = BACKEND

    def __init__(self, folder: Path, manifest: dict[str, Any], *, writable: bool, lock=None):
        self.folder, self.writable, self._lock = Path(folder), writable, lock
        self._manifest = manifest
        state = manifest.get("token_encoding")
        self.encoding: TokenEncoding | None = encoding_from_state(state) if state else None
        self.muvera = None
        if manifest["config"].get("method") == "muvera":
            with np.load(self.folder / "muvera.npz") as arrays:
                self.muvera = Muvera.from_arrays(manifest["muvera"], dict(arrays))
        self._load_segments()

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, *, dim: int, config: dict[str, Any]) -> "MultiVectorStore":
        """A new, empty store; ``config["tokens"]`` says how tokens are kept (``storage``: one of
        :data:`TOKEN_STORAGE`, default float16; ``pool_factor``: None or >= 1)."""
        folder = Path(folder)
        tokens = config.get("tokens") or {}
        token_storage, pool_factor = tokens.get("storage", "float16"), tokens.get("pool_factor")
        if (folder / MANIFEST).exists():
            raise IndexStoreError(f"{folder} already holds an index")
        if token_storage not in TOKEN_STORAGE:
            raise ValueError(f"token storage must be one of {', '.join(TOKEN_STORAGE)}, not {token_storage!r}")
        if pool_factor is not None and int(pool_factor) < 1:
            raise ValueError(f"pool factor must be at least 1, not {pool_factor}")
        if config.get("method", "exact") not in METHODS:
            raise ValueError(f"a multi-vector index searches by {' or '.join(METHODS)}, not {config.get('method')!r}")
        folder.mkdir(parents=True, exist_ok=True)
        lock = _acquire(folder)
        manifest = {"format": 1, "backend": BACKEND, "dim": int(dim), "config": config, "generation": 0,
                    "token_storage": token_storage, "pool_factor": None if pool_factor is None else int(pool_factor),
                    "token_encoding": _fixed_encoding(token_storage, int(dim)), "segments": [], "tombstones": {}}
        if config.get("method") == "muvera":
            muvera = Muvera(int(dim), **MUVERA_PARAMS)
            manifest["muvera"] = muvera.params()
            with atomic_path(folder / "muvera.npz") as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **muvera.arrays())
        write_manifest(folder, manifest)
        return cls(folder, manifest, writable=True, lock=lock)

    @classmethod
    def open(cls, folder: str | os.PathLike, *, writable: bool = False,
             manifest: dict[str, Any] | None = None) -> "MultiVectorStore":
        folder = Path(folder)
        lock = _acquire(folder) if writable else None
        manifest = read_manifest(folder) if manifest is None or writable else manifest
        if manifest.get("backend") != BACKEND:
            raise IndexStoreError(f"{folder} is not a multi-vector index")
        store = cls(folder, manifest, writable=writable, lock=lock)
        if writable:
            store._remove_debris()
        return store

    def _load_segments(self) -> None:
        root = self.folder / _SEGMENTS
        self.segments = [_Segment(root / entry["name"], entry, self.encoding) for entry in self._manifest["segments"]]
        tombstones = self._manifest.get("tombstones") or {}
        #: id -> (segment position, row) of its live version
        self.live: dict[str, tuple[int, int]] = {}
        for s, segment in enumerate(self.segments):
            for row, record in enumerate(segment.records):
                if tombstones.get(record["id"], -1) <= segment.generation:
                    self.live[record["id"]] = (s, row)
                else:
                    self.live.pop(record["id"], None)

    def _remove_debris(self) -> None:
        """Segment folders no manifest names: what a run killed mid-commit left."""
        root = self.folder / _SEGMENTS
        named = {entry["name"] for entry in self._manifest["segments"]}
        if root.is_dir():
            for path in root.iterdir():
                if path.name not in named:
                    shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "MultiVectorStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        return self._manifest["config"]

    @property
    def dim(self) -> int:
        return int(self._manifest["dim"])

    def __len__(self) -> int:
        return len(self.live)

    def _record(self, where: tuple[int, int]) -> dict[str, Any]:
        return self.segments[where[0]].records[where[1]]

    def ids(self) -> list[str]:
        return list(self.live)

    def hashes(self) -> dict[str, str]:
        return {item_id: self._record(where).get("hash") for item_id, where in self.live.items()}

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]:
        return [self._record(self.live[i]) if i in self.live else None for i in ids]

    def records(self) -> Iterable[dict[str, Any]]:
        return (self._record(where) for where in self.live.values())

    def metadata_fields(self) -> set[str]:
        return {field for record in self.records() for field in (record.get("meta") or {})}

    def modality_counts(self) -> dict[str, int]:
        return dict(Counter(record.get("modality") for record in self.records()))

    def check_id(self, item_id: str) -> str | None:
        return None if item_id else "an empty id"

    def token_count(self) -> int:
        """Stored token vectors of the live items (after pooling)."""
        return int(sum(self.segments[s].offsets[row + 1] - self.segments[s].offsets[row] for s, row in self.live.values()))

    # -- search -------------------------------------------------------------------------------

    def check_queries(self, queries) -> list[np.ndarray]:
        """Query token matrices ``(n_tokens, dim)`` float32, checked against the index's dimension."""
        matrices = [np.atleast_2d(np.asarray(q, np.float32)) for q in queries]
        for matrix in matrices:
            if matrix.shape[1] != self.dim or len(matrix) == 0:
                raise ValueError(f"query token vectors are {matrix.shape}; the index holds {self.dim}-d tokens")
        return matrices

    def search(self, queries: Sequence[np.ndarray], k: int, *, filter: Filter | None = None,
               method: str | None = None, ef_search: int | None = None) -> list[list[Hit]]:
        """Top-``k`` items per query by MaxSim, best first; ``method`` ``exact`` or ``muvera`` (the
        index's own by default); ``ef_search``: MUVERA candidates reranked per query."""
        method = method or self.config.get("method", "exact")
        if method not in METHODS:
            raise ValueError(f"a multi-vector index searches by {' or '.join(METHODS)}, not {method!r}")
        if method == "muvera" and self.muvera is None:
            raise ValueError("this index was built for exact search: it holds no MUVERA encodings "
                             "(create it with --method muvera)")
        queries = self.check_queries(queries)
        masks = [self._allowed(s, filter) for s in range(len(self.segments))]
        found: list[list[tuple[float, int, int]]] = [[] for _ in queries]
        if method == "exact":
            for s, (segment, mask) in enumerate(zip(self.segments, masks)):
                if mask.any():
                    scores, rows = maxsim_topk(queries, segment.docs, k, allowed=mask)
                    _collect(found, scores, rows, s)
        else:
            self._first_stage(queries, masks, max(int(ef_search or DEFAULT_DEPTH), int(k)), k, found)
        return [[Hit(score, self.segments[s].records[row]) for score, s, row in
                 sorted(hits, key=lambda h: (-h[0], h[1], h[2]))[:k]] for hits in found]

    def _allowed(self, s: int, filter: Filter | None) -> np.ndarray:
        segment = self.segments[s]
        mask = np.zeros(len(segment.records), bool)
        for row, record in enumerate(segment.records):
            mask[row] = self.live.get(record["id"]) == (s, row) and (filter is None or filter.accepts(record))
        return mask

    def _first_stage(self, queries, masks, depth: int, k: int, found) -> None:
        """MUVERA candidates over every segment, then exact MaxSim of each segment's share."""
        fdes = self.muvera.encode_queries(queries)
        best: list[list[tuple[float, int, int]]] = [[] for _ in queries]
        for s, (segment, mask) in enumerate(zip(self.segments, masks)):
            if not mask.any():
                continue
            estimate = fdes @ np.asarray(segment.fde, np.float32).T
            estimate[:, ~mask] = -np.inf
            take = min(depth, int(mask.sum()))
            top = np.argpartition(-estimate, take - 1, axis=1)[:, :take]
            for i in range(len(queries)):
                best[i] += [(float(estimate[i, row]), s, int(row)) for row in top[i]]
        for s, segment in enumerate(self.segments):
            candidates = np.full((len(queries), depth), -1, np.int64)
            any_here = False
            for i, hits in enumerate(best):
                rows = [row for _, seg, row in sorted(hits, key=lambda h: -h[0])[:depth] if seg == s]
                candidates[i, :len(rows)] = rows
                any_here = any_here or bool(rows)
            if any_here:
                scores, rows = rerank(queries, segment.docs, candidates, k)
                _collect(found, scores, rows, s)

    # -- writing ------------------------------------------------------------------------------

    def commit(self, records: Sequence[dict[str, Any]], vectors: Sequence[np.ndarray],
               delete_ids: Iterable[str] = ()) -> None:
        """Upsert ``records`` with their token matrices and delete ``delete_ids``, as one unit."""
        self._check_writable()
        if len(records) != len(vectors):
            raise ValueError(f"{len(records)} records for {len(vectors)} token matrices")
        deletes = list(dict.fromkeys(delete_ids))
        if not records and not deletes:
            return
        manifest = json.loads(json.dumps(self._manifest))
        generation = int(manifest["generation"]) + 1
        manifest["generation"] = generation
        if records:
            tokens = [self._pooled(matrix) for matrix in vectors]
            if manifest["token_encoding"] is None:  # int8 / binary: calibrated on the first commit's tokens
                manifest["token_encoding"] = _fit_encoding(manifest["token_storage"], np.concatenate(tokens)).state()
            encoding = encoding_from_state(manifest["token_encoding"])
            name = f"g{generation:06d}"
            self._write_segment(name, records, tokens, encoding)
            manifest["segments"].append({"name": name, "generation": generation, "items": len(records)})
        for item_id in deletes:
            manifest["tombstones"][item_id] = generation
        write_manifest(self.folder, manifest)
        self._manifest = manifest
        self.encoding = encoding_from_state(manifest["token_encoding"]) if manifest["token_encoding"] else None
        self._load_segments()

    def _pooled(self, matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dim or len(matrix) == 0:
            raise ValueError(f"token vectors of shape {matrix.shape}; the index holds {self.dim}-d tokens")
        factor = self._manifest.get("pool_factor")
        return pool_tokens(matrix, int(factor)) if factor and factor > 1 else matrix

    def _write_segment(self, name: str, records, tokens: list[np.ndarray], encoding: TokenEncoding) -> None:
        """The segment's files in a temporary folder, synced, then renamed into place."""
        root = self.folder / _SEGMENTS
        root.mkdir(exist_ok=True)
        tmp = root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        offsets = np.concatenate([[0], np.cumsum([len(t) for t in tokens])]).astype(np.int64)
        files = {"codes.npy": encoding.encode(np.concatenate(tokens)), "offsets.npy": offsets}
        if self.muvera is not None:
            files["fde.npy"] = self.muvera.encode_documents(tokens).astype(np.float32)
        for file_name, array in files.items():
            with open(tmp / file_name, "wb") as handle:
                np.save(handle, array)
                handle.flush()
                os.fsync(handle.fileno())
        with open(tmp / "records.jsonl", "w", encoding="utf-8") as handle:
            handle.write("".join(json_line(record) + "\n" for record in records))
            handle.flush()
            os.fsync(handle.fileno())
        fsync_dir(tmp)
        replace_durably(tmp, root / name)

    def delete(self, ids: Iterable[str]) -> int:
        present = [i for i in dict.fromkeys(ids) if i in self.live]
        if present:
            self.commit([], [], delete_ids=present)
        return len(present)

    def set_config(self, config: dict[str, Any]) -> None:
        self._check_writable()
        manifest = {**self._manifest, "config": config}
        write_manifest(self.folder, manifest)
        self._manifest = manifest

    def update_graph(self, *, m: int, ef_construction: int) -> None:
        """Nothing to keep current: the MUVERA encodings are written with each segment."""

    def compact(self) -> None:
        """The live rows, codes copied as stored (no re-encoding), in one new segment."""
        self._check_writable()
        old = [entry["name"] for entry in self._manifest["segments"]]
        manifest = json.loads(json.dumps(self._manifest))
        generation = int(manifest["generation"]) + 1
        manifest.update(generation=generation, tombstones={}, segments=[])
        if self.live:
            name = f"g{generation:06d}"
            records = [self._record(where) for where in self.live.values()]
            self._write_compacted(name, list(self.live.values()), records)
            manifest["segments"].append({"name": name, "generation": generation, "items": len(records)})
        write_manifest(self.folder, manifest)
        self._manifest = manifest
        self._load_segments()
        for name in old:
            shutil.rmtree(self.folder / _SEGMENTS / name, ignore_errors=True)

    def _write_compacted(self, name: str, places: list[tuple[int, int]], records: list[dict]) -> None:
        root = self.folder / _SEGMENTS
        tmp = root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        codes = [self.segments[s].codes[self.segments[s].offsets[r]:self.segments[s].offsets[r + 1]] for s, r in places]
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in codes])]).astype(np.int64)
        files = {"codes.npy": np.concatenate(codes), "offsets.npy": offsets}
        if self.muvera is not None:
            files["fde.npy"] = np.stack([self.segments[s].fde[r] for s, r in places]).astype(np.float32)
        for file_name, array in files.items():
            with open(tmp / file_name, "wb") as handle:
                np.save(handle, array)
                os.fsync(handle.fileno())
        with open(tmp / "records.jsonl", "w", encoding="utf-8") as handle:
            handle.write("".join(json_line(record) + "\n" for record in records))
            os.fsync(handle.fileno())
        fsync_dir(tmp)
        replace_durably(tmp, root / name)

    def _check_writable(self) -> None:
        if not self.writable:
            raise IndexStoreError(f"{self.folder} is open for reading only")


def _collect(found, scores: np.ndarray, rows: np.ndarray, segment: int) -> None:
    for i in range(len(found)):
        found[i] += [(float(score), segment, int(row)) for score, row in zip(scores[i], rows[i]) if row >= 0]


def _fixed_encoding(storage: str, dim: int) -> dict[str, Any] | None:
    """The encoding's state when it needs no calibration; None until the first commit otherwise."""
    if storage == "float16":
        return Float16Encoding(dim).state()
    if storage == "float32":
        return Float32Encoding(dim).state()
    return None


def _fit_encoding(storage: str, sample: np.ndarray) -> TokenEncoding:
    return Int8Encoding.fit(sample) if storage == "int8" else BinaryEncoding.fit(sample)


def _acquire(folder: Path):
    """The index's writer lock (one writer at a time; readers never wait)."""
    handle = open(folder / _LOCK, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise IndexLocked(f"{folder} is being written by another process; wait for it to finish") from None
    return handle
