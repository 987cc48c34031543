"""An on-disk cache of rerank scores that makes ``umr eval --rerank`` resumable.

Scores are stored in shards (``shard-000012.npz``: pair fingerprints and float32 scores), each
written atomically once its chunk of pairs is scored, as the embedding cache stores vectors
(:mod:`umr.eval.cache`). A pair's fingerprint covers what the reranker sees: the query's and the
candidate's :func:`umr.core.fingerprint.item_fingerprint` and the task name (which picks a zero-shot
prompt). Pairs that cannot be scored are remembered in ``errors.jsonl`` (not retried).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..core.atomic import write_bytes_atomic
from ..core.fingerprint import item_fingerprint
from .base import Pair, Reranker


def pair_fingerprint(pair: Pair) -> str:
    key = f"{item_fingerprint(pair.query)}\x00{item_fingerprint(pair.candidate)}\x00{pair.task or ''}"
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


class RerankStore:
    """Cached scores of one reranker (its :func:`~umr.rerank.registry.reranker_key`) under ``root``."""

    def __init__(self, root: str | Path, key: str, *, chunk_size: int = 1024):
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in key)[:80].strip(".") or "reranker"
        self.dir = Path(root) / f"{safe}-{hashlib.sha1(key.encode('utf-8')).hexdigest()[:12]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.chunk_size = chunk_size
        self._scores: dict[str, float] = {}
        self._errors: dict[str, str] = {}
        self._next_shard = 0
        self._load()

    def _load(self) -> None:
        for shard in sorted(self.dir.glob("shard-*.npz")):
            try:
                with np.load(shard) as data:
                    self._scores.update(zip(data["fps"].tolist(), data["scores"].tolist()))
            except Exception:  # noqa: BLE001 - a torn shard (killed mid-write) is scored again
                continue
            self._next_shard = max(self._next_shard, int(shard.stem.split("-")[1]) + 1)
        errors = self.dir / "errors.jsonl"
        if errors.is_file():
            for line in errors.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    self._errors[str(record["fp"])] = str(record["error"])
                except (ValueError, TypeError, KeyError):  # a line torn by a kill: that pair is retried
                    continue

    def __len__(self) -> int:
        return len(self._scores)

    def score(self, reranker: Reranker, pairs: Sequence[Pair], *, batch_size: int | None = None,
              show_progress_bar: bool = False) -> tuple[np.ndarray, dict[int, str], float]:
        """Scores of ``pairs`` (NaN where a pair cannot be scored), the reasons by position, and the
        seconds spent scoring; only pairs not in the cache are scored."""
        fps = [pair_fingerprint(p) for p in pairs]
        missing: dict[str, int] = {}
        for i, fp in enumerate(fps):
            if fp not in self._scores and fp not in self._errors and fp not in missing:
                missing[fp] = i
        todo = list(missing.values())
        spent = 0.0
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start:start + self.chunk_size]
            t0 = time.perf_counter()
            result = reranker.score_pairs([pairs[i] for i in chunk], batch_size=batch_size,
                                          show_progress_bar=show_progress_bar, on_error="skip")
            spent += time.perf_counter() - t0
            if result.errors:
                with (self.dir / "errors.jsonl").open("a", encoding="utf-8") as handle:
                    for err in result.errors:
                        fp = fps[chunk[err.index]]
                        self._errors[fp] = err.reason
                        handle.write(json.dumps({"fp": fp, "id": err.item_id, "error": err.reason}) + "\n")
            done = [fps[chunk[j]] for j in result.indices]
            self._write_shard(done, np.asarray(result.scores, dtype=np.float32))
            self._scores.update(zip(done, result.scores.tolist()))
        scores = np.array([self._scores.get(fp, np.nan) for fp in fps], dtype=np.float32)
        errors = {i: self._errors[fp] for i, fp in enumerate(fps) if fp in self._errors}
        return scores, errors, spent

    def _write_shard(self, fps: list[str], scores: np.ndarray) -> None:
        path = self.dir / f"shard-{self._next_shard:06d}.npz"
        self._next_shard += 1
        write_bytes_atomic(path, lambda handle: np.savez(handle, fps=np.asarray(fps, dtype="U40"), scores=scores))
