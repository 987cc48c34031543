"""An on-disk embedding cache that makes evaluation resumable.

Vectors are stored in shards (``shard-000123.npz``: item fingerprints and float32 vectors), each
written atomically once its chunk of items is embedded. An interrupted evaluation therefore loses
at most one chunk; the next run loads the shards, embeds only what is missing, and gets exactly
the vectors it would have had. The fingerprint covers what the model sees (role, text, image
path, instruction), so a candidate shared by a local pool and the global pool, or by two tasks,
is embedded once. Items that cannot be embedded are remembered in ``errors.jsonl`` (not retried).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..fingerprint import item_fingerprint
from ..types import Item


def fingerprint(item: Item) -> str:
    """What the model sees, hashed: role, text, image content (file bytes, bytes or pixels),
    instruction — :func:`umr.fingerprint.item_fingerprint`, the one rule umr uses everywhere."""
    return item_fingerprint(item)


def _folder_name(model_key: str) -> str:
    """``<readable prefix>-<sha1 of the whole key>[:12]``: distinct keys never share a folder (the
    prefix alone would: ``org/model`` and ``org_model``, or two long names cut at the same place)."""
    prefix = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_key)[:80].strip(".") or "model"
    return f"{prefix}-{hashlib.sha1(model_key.encode('utf-8')).hexdigest()[:12]}"


class EmbeddingStore:
    """Cached vectors of one model under ``root/<model>``.

    ``model_name`` is the model's full key: its name plus whatever options change its vectors
    (see :class:`umr.eval.runner.Evaluator`).
    """

    def __init__(self, root: str | Path, model_name: str, *, chunk_size: int = 4096):
        self.dir = Path(root) / _folder_name(model_name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self._vectors: dict[str, np.ndarray] = {}
        self._errors: dict[str, str] = {}
        self._next_shard = 0
        self._load()

    def _load(self) -> None:
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    for fp, vec in zip(data["fps"].tolist(), data["vectors"]):
                        self._vectors[fp] = vec
            except Exception:  # noqa: BLE001 - a torn shard (killed mid-write) is re-embedded
                continue
            self._next_shard = max(self._next_shard, int(shard.stem.split("-")[1]) + 1)
        errors = self.dir / "errors.jsonl"
        if errors.is_file():
            for line in errors.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    fp, reason = record["fp"], record["error"]
                except (ValueError, TypeError, KeyError):  # a line torn by a kill: that item is retried
                    continue
                if isinstance(fp, str):
                    self._errors[fp] = str(reason)

    def __len__(self) -> int:
        return len(self._vectors)

    def embed(self, model, items: Sequence[Item], *, batch_size: int | None = None,
              show_progress_bar: bool = False) -> tuple[np.ndarray, np.ndarray, dict[int, str], float]:
        """Vectors for ``items`` (rows in item order for the items that could be embedded).

        Returns ``(vectors, kept_positions, errors_by_position, seconds_spent_embedding)``.
        """
        import time

        fps = [fingerprint(item) for item in items]
        missing: dict[str, int] = {}
        for i, fp in enumerate(fps):
            if fp not in self._vectors and fp not in self._errors and fp not in missing:
                missing[fp] = i
        todo = list(missing.values())
        spent = 0.0
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            t0 = time.perf_counter()
            result = model.embed([items[i] for i in chunk], batch_size=batch_size,
                                 show_progress_bar=show_progress_bar, on_error="skip")
            spent += time.perf_counter() - t0
            done_fps = [fps[chunk[j]] for j in result.indices]
            if result.errors:
                with (self.dir / "errors.jsonl").open("a+b") as handle:
                    if handle.seek(0, os.SEEK_END):  # a torn last line (killed mid-write) is ended first
                        handle.seek(-1, os.SEEK_END)
                        if handle.read(1) != b"\n":
                            handle.write(b"\n")
                    for err in result.errors:
                        fp = fps[chunk[err.index]]
                        self._errors[fp] = err.reason
                        record = {"fp": fp, "id": err.item_id, "error": err.reason}
                        handle.write((json.dumps(record) + "\n").encode("utf-8"))
            vectors = np.asarray(result.vectors, dtype=np.float32)
            self._write_shard(done_fps, vectors)
            for fp, vec in zip(done_fps, vectors):
                self._vectors[fp] = vec
        kept = [i for i, fp in enumerate(fps) if fp in self._vectors]
        errors = {i: self._errors[fp] for i, fp in enumerate(fps) if fp in self._errors}
        if kept:
            matrix = np.stack([self._vectors[fps[i]] for i in kept]).astype(np.float32, copy=False)
        else:
            matrix = np.zeros((0, int(getattr(model, "dim", 0))), np.float32)
        return matrix, np.asarray(kept, dtype=np.int64), errors, spent

    def _write_shard(self, fps: list[str], vectors: np.ndarray) -> None:
        path = self.dir / f"shard-{self._next_shard:06d}.npz"
        self._next_shard += 1
        tmp = self.dir / f"tmp-{path.name}"
        np.savez(tmp, fps=np.asarray(fps, dtype="U40"), vectors=vectors)
        os.replace(tmp, path)
