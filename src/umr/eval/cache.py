"""An on-disk embedding cache that makes evaluation resumable and keeps memory at one pool.

One model's vectors live in two append-only files: ``vectors.f32`` (raw float32 rows) and
``fps.txt`` (one item fingerprint per line, row ``i`` of one is line ``i`` of the other), plus
``meta.json`` (the dimension). Work is committed every ``commit_every`` items or
``commit_seconds`` (as ``umr index`` commits), by appending the rows first and their fingerprint
lines second, so an interrupted evaluation loses at most the work since the last commit; a torn
tail (a kill mid-append) is cut off when the cache is opened. Appends and that repair hold a
lock (``flock``), so two evaluations sharing a cache never interleave their rows. The vectors are memory-mapped,
never loaded: a pool whose rows are contiguous is searched straight from the map, and any
other is gathered by block reads (one copy), so memory holds one pool's vectors, not every
vector the cache has.

The fingerprint covers what the model sees (role, text, image, instruction), so a candidate
shared by a local pool and the global pool, or by two tasks, is embedded once. Items that cannot
be embedded are remembered in ``errors.jsonl`` with a stamp of their image file (size and
modification time): an item whose file changed since it failed is embedded again, and
``retry_errors=True`` retries every recorded failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.atomic import write_text_atomic
from ..core.fingerprint import item_fingerprint
from ..core.items import Item
from ..index.embedding import ChunkEmbedder, LocalEmbedder
from ..models.base import Embedder
from ..models.identity import model_identity


def fingerprint(item: Item) -> str:
    """What the model sees, hashed: role, text, image content (file bytes, bytes or pixels),
    instruction — :func:`umr.core.fingerprint.item_fingerprint`, the one rule umr uses everywhere."""
    return item_fingerprint(item)


def model_key(model, options: Mapping[str, Any] | None = None) -> str:
    """The key of a model's cached vectors and finished tasks: its name plus every option that
    changes its vectors, e.g. ``gme-2b[dtype=bfloat16,max_image_tokens=256]``.

    The one place that decides when two runs may share vectors and results (the CLI and
    :class:`~umr.eval.runner.Evaluator` both ask it). Options set to ``None`` are left out.
    """
    name = str(getattr(model, "name", None) or type(model).__name__)
    # a loaded model's identity (files and options) decides; one built by hand is known by its name.
    # (Only a real Embedder is asked: the CLI's lazily loaded model must not load to give its key.)
    identity = model_identity(model) if isinstance(model, Embedder) else None
    if identity is not None and identity.files:
        options = {"identity": identity.key(), **(options or {})}
    shown = ",".join(f"{k}={v}" for k, v in sorted((options or {}).items()) if v is not None)
    return f"{name}[{shown}]" if shown else name


def _folder_name(model_key: str) -> str:
    """``<readable prefix>-<sha1 of the whole key>[:12]``: distinct keys never share a folder (the
    prefix alone would: ``org/model`` and ``org_model``, or two long names cut at the same place)."""
    prefix = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_key)[:80].strip(".") or "model"
    return f"{prefix}-{hashlib.sha1(model_key.encode('utf-8')).hexdigest()[:12]}"


def _file_stamp(item: Item) -> list | None:
    """What tells that an item's image file changed: its size and modification time (None for an
    item without an image file, whose fingerprint already covers everything it is made of)."""
    if not isinstance(item.image, (str, os.PathLike)):
        return None
    try:
        stat = os.stat(item.image)
    except OSError:
        return ["missing"]
    return [stat.st_size, stat.st_mtime_ns]


def _read_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole lines of a file of fixed-width fingerprint lines, as a bytes array (no Python
    object per line: the global pool has millions) and the offset of each line's end; a torn
    last line is left out. Lines of mixed widths (fingerprints changed format) are read one by
    one."""
    buf = np.fromfile(path, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if not len(ends):
        return np.zeros(0, "S1"), ends
    widths = np.diff(ends, prepend=-1) - 1
    if (widths == widths[0]).all() and widths[0] > 0:
        width = int(widths[0])
        return buf[:len(ends) * (width + 1)].view(f"S{width + 1}").astype(f"S{width}"), ends
    return np.array(bytes(buf[:ends[-1]]).split(b"\n")), ends


class EmbeddingStore:
    """Cached vectors of one model under ``root/<model>``.

    ``model_name`` is the model's full key (:func:`model_key`).
    """

    def __init__(self, root: str | Path, model_name: str, *, commit_every: int = 256,
                 commit_seconds: float = 30.0, retry_errors: bool = False):
        if commit_every < 1:
            raise ValueError("commit_every must be at least 1")
        self.dir = Path(root) / _folder_name(model_name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.commit_every = commit_every
        self.commit_seconds = commit_seconds
        self.retry_errors = retry_errors
        self._vectors_path = self.dir / "vectors.f32"
        self._fps_path = self.dir / "fps.txt"
        self.dim: int | None = None
        self._map: np.memmap | None = None
        self._fps_size = -1  # the size of fps.txt when this store last read or wrote it
        self._tried: set[str] = set()  # fingerprints this store has tried to embed (retried at most once)
        with self._locked():
            self._migrate_shards()

    # -- opening -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        """Exclusive use of the files while they are read, repaired or appended to: a second
        evaluation sharing this cache waits, then reads what the first one committed."""
        with (self.dir / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if (self._fps_path.stat().st_size if self._fps_path.is_file() else 0) != self._fps_size:
                    self._read()  # first use, or written by another store since this one last looked
                yield
            finally:
                self._fps_size = self._fps_path.stat().st_size if self._fps_path.is_file() else 0
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> None:
        """Read the files (cutting off a torn tail): the fingerprint index and the failures."""
        self._n = 0
        # fingerprints of rows [0, n): sorted, with their rows; rows committed since the last
        # merge are in ``_recent`` (a dict, merged into the sorted arrays once it grows)
        self._sorted = np.zeros(0, "S1")
        self._order = np.zeros(0, np.int64)
        self._recent: dict[str, int] = {}
        #: fingerprint -> (reason, file stamp at failure)
        self.errors: dict[str, tuple[str, list | None]] = {}
        meta = self.dir / "meta.json"
        if meta.is_file():
            self.dim = int(json.loads(meta.read_text(encoding="utf-8"))["dim"])
        if self.dim is not None and self._fps_path.is_file():
            fps, ends = _read_lines(self._fps_path)  # a torn last line (killed mid-append) is left out
            rows = self._vectors_path.stat().st_size // (4 * self.dim) if self._vectors_path.is_file() else 0
            n = min(len(fps), rows)
            fps = fps[:n]
            size = int(ends[n - 1]) + 1 if n else 0
            if self._fps_path.stat().st_size != size:
                with self._fps_path.open("r+b") as handle:
                    handle.truncate(size)
            if self._vectors_path.is_file() and self._vectors_path.stat().st_size != n * 4 * self.dim:
                with self._vectors_path.open("r+b") as handle:  # rows whose fingerprints never landed
                    handle.truncate(n * 4 * self.dim)
            self._n = n
            if n:
                self._order = np.argsort(fps, kind="stable")
                self._sorted = fps[self._order]
        errors = self.dir / "errors.jsonl"
        if errors.is_file():
            for line in errors.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    fp, reason = record["fp"], record["error"]
                except (ValueError, TypeError, KeyError):  # a line torn by a kill: that item is retried
                    continue
                if isinstance(fp, str):
                    self.errors[fp] = (str(reason), record.get("stamp"))

    def _migrate_shards(self) -> None:
        """Caches written before the append-only files (``shard-*.npz``) are moved into them, one
        shard at a time, so nothing embedded earlier is embedded again."""
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    fps, vectors = [str(fp) for fp in data["fps"].tolist()], np.asarray(data["vectors"], np.float32)
            except Exception:  # noqa: BLE001 - a torn shard (killed mid-write) is re-embedded
                shard.unlink()
                continue
            fresh = [j for j, fp in enumerate(fps) if self._row(fp) < 0]
            if fresh:
                self._append([fps[j] for j in fresh], vectors[fresh])
            shard.unlink()
        for tmp in self.dir.glob("tmp-shard-*"):
            tmp.unlink()

    # -- lookups -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._n

    def _row(self, fp: str) -> int:
        return int(self._rows([fp])[0])

    def _rows(self, fps: Sequence[str]) -> np.ndarray:
        """Row of each fingerprint, -1 where it is not cached."""
        out = np.full(len(fps), -1, np.int64)
        if len(self._sorted) and len(fps):
            width = max(self._sorted.dtype.itemsize, max(len(fp) for fp in fps))
            keys = np.array([fp.encode("utf-8") for fp in fps], dtype=f"S{width}")
            base = self._sorted.astype(f"S{width}", copy=False)
            pos = np.minimum(np.searchsorted(base, keys), len(base) - 1)
            hit = base[pos] == keys
            out[hit] = self._order[pos[hit]]
        if self._recent:
            for i, fp in enumerate(fps):
                if out[i] < 0:
                    out[i] = self._recent.get(fp, -1)
        return out

    def _failure(self, fp: str, item: Item) -> str | None:
        """The recorded reason this item failed, unless it is to be tried again."""
        record = self.errors.get(fp)
        if record is None or (self.retry_errors and fp not in self._tried) or record[1] != _file_stamp(item):
            return None
        return record[0]

    def failure_state(self, items: Sequence[Item]) -> tuple[int, bool]:
        """``(how many of items stand failed, whether any failed one would now be tried again)``
        (its image file changed, or ``retry_errors``). A finished task whose failures differ from
        this is not final: it is scored again."""
        if not self.errors:
            return 0, False
        failed = [(fp, item) for fp, item in ((fingerprint(item), item) for item in items) if fp in self.errors]
        rows = self._rows([fp for fp, _ in failed])  # a vector since: no longer failed
        standing, retry = 0, False
        for (fp, item), row in zip(failed, rows):
            if row < 0:
                if self._failure(fp, item) is None:
                    retry = True
                else:
                    standing += 1
        return standing, retry

    def _vectors(self) -> np.ndarray:
        if self._map is None or len(self._map) != self._n:
            self._map = np.memmap(self._vectors_path, dtype=np.float32, mode="r", shape=(self._n, self.dim)) \
                if self._n else None
        return self._map

    # -- writing -----------------------------------------------------------------------------

    def _append(self, fps: list[str], vectors: np.ndarray) -> None:
        """Commit rows: vectors first, then their fingerprints (a row counts once its line is
        whole). Called with the lock held."""
        if not fps:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.dim is None:
            self.dim = int(vectors.shape[1])
            write_text_atomic(self.dir / "meta.json", json.dumps({"format": 2, "dim": self.dim}))
        with self._vectors_path.open("ab") as handle:
            handle.write(vectors.tobytes())
        with self._fps_path.open("ab") as handle:
            handle.write("".join(fp + "\n" for fp in fps).encode("utf-8"))
        for j, fp in enumerate(fps):
            self._recent[fp] = self._n + j
        self._n += len(fps)
        if len(self._recent) > max(100_000, len(self._sorted) // 4):
            self._merge_recent()

    def _merge_recent(self) -> None:
        fps = list(self._recent)
        width = max([self._sorted.dtype.itemsize] + [len(fp) for fp in fps])
        keys = np.concatenate([self._sorted.astype(f"S{width}"), np.array([fp.encode("utf-8") for fp in fps],
                                                                         dtype=f"S{width}")])
        rows = np.concatenate([self._order, np.array([self._recent[fp] for fp in fps], np.int64)])
        order = np.argsort(keys, kind="stable")
        self._sorted, self._order, self._recent = keys[order], rows[order], {}

    def _record_errors(self, records: list[dict]) -> None:
        with (self.dir / "errors.jsonl").open("a+b") as handle:
            if handle.seek(0, os.SEEK_END):  # a torn last line (killed mid-write) is ended first
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            for record in records:
                handle.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    # -- the one entry point -----------------------------------------------------------------

    def embed(self, embedder: "ChunkEmbedder | Embedder", items: Sequence[Item], *, batch_size: int | None = None,
              show_progress_bar: bool = False, name: str | None = None,
              ) -> tuple[np.ndarray, np.ndarray, dict[int, str], float]:
        """Vectors for ``items`` (rows in item order for the items that could be embedded), the
        missing ones embedded by ``embedder`` (an :class:`Embedder` runs here; any
        :class:`~umr.index.embedding.ChunkEmbedder`, e.g. Ray workers, where it runs them).

        Returns ``(vectors, kept_positions, errors_by_position, seconds_spent_embedding)``;
        ``vectors`` is read from the memory map (a view when the rows are contiguous).
        """
        if isinstance(embedder, Embedder):
            name, embedder = name or embedder.name, LocalEmbedder(embedder)
        fps = [fingerprint(item) for item in items]
        with self._locked():
            return self._embed(embedder, items, fps, batch_size=batch_size, show_progress_bar=show_progress_bar,
                               name=name or "")

    def _embed(self, embedder: "ChunkEmbedder", items: Sequence[Item], fps: list[str], *, batch_size: int | None,
               show_progress_bar: bool, name: str) -> tuple[np.ndarray, np.ndarray, dict[int, str], float]:
        from tqdm.auto import tqdm

        rows = self._rows(fps)
        todo: dict[str, int] = {}
        for i in np.flatnonzero(rows < 0).tolist():
            if fps[i] not in todo and self._failure(fps[i], items[i]) is None:
                todo[fps[i]] = i
        positions = list(todo.values())
        self._tried.update(todo)
        spent = 0.0
        step = max(1, min(self.commit_every, 4 * (batch_size or 32)))
        pending_fps: list[str] = []
        pending_vectors: list[np.ndarray] = []
        last_commit = time.monotonic()

        def commit() -> None:
            nonlocal pending_fps, pending_vectors, last_commit
            if pending_fps:
                self._append(pending_fps, np.concatenate(pending_vectors))
            pending_fps, pending_vectors, last_commit = [], [], time.monotonic()

        chunks = [positions[start:start + step] for start in range(0, len(positions), step)]
        results = embedder.map(([items[i] for i in chunk] for chunk in chunks), batch_size=batch_size)
        with tqdm(total=len(positions), disable=not show_progress_bar, desc=f"embed [{name}]",
                  unit="item", dynamic_ncols=True) as bar:
            for chunk in chunks:
                t0 = time.perf_counter()
                result = next(results)  # in chunk order, whether embedded here or on workers
                spent += time.perf_counter() - t0
                if result.errors:
                    records = []
                    for err in result.errors:
                        item = items[chunk[err.index]]
                        fp, stamp = fps[chunk[err.index]], _file_stamp(item)
                        self.errors[fp] = (err.reason, stamp)
                        records.append({"fp": fp, "id": err.item_id, "error": err.reason, "stamp": stamp})
                    self._record_errors(records)
                if len(result.indices):
                    pending_fps += [fps[chunk[j]] for j in result.indices]
                    pending_vectors.append(np.asarray(result.vectors, dtype=np.float32))
                bar.update(len(chunk))
                if len(pending_fps) >= self.commit_every or time.monotonic() - last_commit >= self.commit_seconds:
                    commit()
            commit()

        rows = self._rows(fps)
        kept = np.flatnonzero(rows >= 0)
        errors = {i: reason for i in np.flatnonzero(rows < 0).tolist()
                  if (reason := self.errors.get(fps[i], (None,))[0]) is not None}
        dim = self.dim or 0  # nothing ever embedded: no width to give the empty matrix
        if not len(kept):
            return np.zeros((0, dim), np.float32), kept, errors, spent
        chosen = rows[kept]
        first = int(chosen[0])
        if np.array_equal(chosen, np.arange(first, first + len(chosen))):
            return np.asarray(self._vectors()[first:first + len(chosen)]), kept, errors, spent
        return self._gather(chosen), kept, errors, spent

    #: bytes read at a time when gathering scattered rows
    READ_BLOCK = 4 << 20

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Scattered rows in the given order: the one copy of this pool's vectors. Read block by
        block rather than through the map, whose touched pages would stay resident beside it."""
        out = np.empty((len(rows), self.dim), np.float32)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        row_bytes = 4 * self.dim
        per_block = max(1, self.READ_BLOCK // row_bytes)
        start = 0
        while start < len(ordered):
            low = int(ordered[start])
            stop = int(np.searchsorted(ordered, low + per_block))
            high = int(ordered[stop - 1]) + 1
            block = np.fromfile(self._vectors_path, dtype=np.float32, count=(high - low) * self.dim,
                                offset=low * row_bytes).reshape(high - low, self.dim)
            out[order[start:stop]] = block[ordered[start:stop] - low]
            start = stop
        return out
