"""Keeping an index folder small: compaction (live rows rewritten into one segment), garbage
collection (files no manifest names, left by a killed commit) and the retirement of superseded
deleted-rows files. Each step only ever removes what the current manifest no longer names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..base import MANIFEST
from .manifest import Keys, Snapshot, files_named, next_manifest
from .segments import CHUNK_ROWS, segment_name, write_segment

if TYPE_CHECKING:
    from ..compact import CompactVectors

#: superseded deleted-rows files kept for readers still loading an older manifest
KEEP_SUPERSEDED = 16
_DATA_FILE = re.compile(r"^(seg-\d+\.(npy|jsonl|keys)|del-\d+\.npy|hnsw-\d+\.faiss|vectors-\d+\.f32|codes-\d+\.u8)"
                        r"(\.tmp)?$")


def write_compacted(folder: Path, snapshot: Snapshot, keys: Keys, dim: int,
                    vectors: Callable[[], np.ndarray] | None,
                    compact: CompactVectors | None = None) -> dict[str, Any]:
    """Write the live rows of ``snapshot`` as one segment and return the manifest naming only it,
    with no deleted rows and no HNSW graph. ``vectors`` gives every row's vectors (asked only when
    a row is live); a quantised store's ``compact`` vectors are rewritten instead (int8 re-fitted
    on the live rows). The caller fsyncs the folder and writes the manifest."""
    manifest, number = next_manifest(snapshot.manifest)
    manifest.update(deleted=None, hnsw=None)
    name = segment_name(number)
    live = np.flatnonzero(~snapshot.deleted.view())
    if compact is not None:
        manifest["compact"] = compact.rewrite(live, number).record
    if len(live):
        lines = (line for _, line in snapshot.live_lines())
        blocks = None
        if vectors is not None:
            matrix = vectors()
            blocks = (matrix[live[b:b + CHUNK_ROWS]] for b in range(0, len(live), CHUNK_ROWS))
        rows = live.tolist()
        write_segment(folder, name, lines, [keys.ids[r] for r in rows], [keys.hashes[r] for r in rows],
                      len(live), dim, blocks)
        manifest["segments"] = [{"name": name, "rows": len(live)}]
    else:
        manifest["segments"] = []
    return manifest


def collect_garbage(folder: Path, manifest: dict[str, Any]) -> None:
    """Remove the data files ``manifest`` does not name (left by a commit that was killed)."""
    keep = files_named(manifest) | {MANIFEST}
    for path in folder.iterdir():
        if (_DATA_FILE.match(path.name) or path.name == MANIFEST + ".tmp") and path.name not in keep:
            try:
                path.unlink()
            except OSError:
                pass


class Superseded:
    """Deleted-rows files a newer commit replaced. Readers load that file right after the
    manifest; keeping the last few gives a reader that read an older manifest time to finish."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._names: list[str] = []

    def retire(self, name: str) -> None:
        self._names.append(name)
        while len(self._names) > KEEP_SUPERSEDED:
            (self.folder / self._names.pop(0)).unlink(missing_ok=True)
