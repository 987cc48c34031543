"""Durable memory of finished synthesis work, keyed by content.

Every generation, retrieval check and image score is stored under a key made of everything its
result depends on (model, prompt, settings), in SQLite, one transaction per batch: a run killed
at any moment loses at most the batch in flight, and the same command skips what is stored.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable


class WorkCache:
    def __init__(self, path: str | os.PathLike):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS work (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self.db.commit()

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(keys)
        found: dict[str, Any] = {}
        for start in range(0, len(keys), 500):
            part = keys[start:start + 500]
            rows = self.db.execute(f"SELECT key, value FROM work WHERE key IN ({','.join('?' * len(part))})", part)
            found.update((k, json.loads(v)) for k, v in rows)
        return found

    def put_many(self, values: dict[str, Any]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO work (key, value) VALUES (?, ?)",
                                [(k, json.dumps(v, ensure_ascii=False)) for k, v in values.items()])

    def close(self) -> None:
        self.db.close()
