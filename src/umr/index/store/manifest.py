"""The manifest and the snapshot it names.

The manifest is the store's one source of truth: a commit writes its files, then replaces the
manifest whole (:func:`~umr.index.base.write_manifest`), so a reader sees the old snapshot or the
new one. This module makes the manifests a writer writes (:func:`new_manifest`,
:func:`next_manifest`) and maps one into a :class:`Snapshot` that a reader searches; it reads the
rows' files through :mod:`.segments` and knows nothing of search.
"""

from __future__ import annotations

import bisect
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ..base import FORMAT, IndexStoreError, read_manifest
from .segments import Segment, read_deleted, segment_suffixes


def new_manifest(dim: int, config: dict[str, Any], compact: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of an empty store; ``compact``: a quantised store's record of its compact
    vectors (:func:`umr.index.compact.new_record`), which then hold the vectors instead of the segments."""
    return {"format": FORMAT, "version": 0, "dim": int(dim), "config": config,
            "segments": [], "deleted": None, "hnsw": None, "next_file": 1, "compact": compact}


def next_version(manifest: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``manifest`` one version on, for a writer to edit (readers keep the old one)."""
    manifest = json.loads(json.dumps(manifest))
    manifest["version"] += 1
    return manifest


def next_manifest(manifest: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """:func:`next_version` of ``manifest``, and the number its new files take (file names are
    never reused, so a reader of the old manifest never meets a rewritten file)."""
    manifest = next_version(manifest)
    number = manifest["next_file"]
    manifest["next_file"] = number + 1
    return manifest, number


def files_named(manifest: dict[str, Any]) -> set[str]:
    """The data files ``manifest`` refers to (everything else a writer may remove)."""
    compact = manifest.get("compact")
    suffixes = segment_suffixes(vectors=compact is None)
    named = {seg["name"] + suffix for seg in manifest["segments"] for suffix in suffixes}
    if compact:
        named |= {compact[key] for key in ("floats", "codes") if compact[key]}
    if manifest.get("deleted"):
        named.add(manifest["deleted"])
    if manifest.get("hnsw"):
        named.add(manifest["hnsw"]["file"])
    return named


class Flags:
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
class Keys:
    """Ids and hashes by row and the row of every live id: what writes and lookups by id need,
    loaded on first use (a search never needs them)."""

    ids: list[str]
    hashes: list[str | None]
    row_of: dict[str, int]


@dataclass
class Snapshot:
    """One consistent snapshot: what a manifest names, mapped."""

    manifest: dict[str, Any]
    segments: list[Segment] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # first global row of each segment
    rows: int = 0
    deleted: Flags = field(default_factory=Flags)
    deleted_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # sorted
    keys: Keys | None = None

    @property
    def live(self) -> int:
        return self.rows - len(self.deleted_rows)

    def read_keys(self) -> Keys:
        """The ids and hashes of every row, read from the segments on first use (the caller
        holds the store's lock: one reader loads them)."""
        if self.keys is None:
            ids: list[str] = []
            hashes: list[str | None] = []
            for seg in self.segments:
                seg_ids, seg_hashes = seg.keys()
                ids.extend(seg_ids)
                hashes.extend(seg_hashes)
            if len(self.deleted_rows):
                row_of = {ids[row]: row for row in np.flatnonzero(~self.deleted.view()).tolist()}
            else:
                row_of = dict(zip(ids, range(len(ids))))
            self.keys = Keys(ids, hashes, row_of)
        return self.keys

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

    def append(self, segment: Segment) -> None:
        self.segments.append(segment)
        self.starts.append(self.rows)
        self.rows += segment.rows
        self.deleted.grow(segment.rows)

    def apply(self, manifest: dict[str, Any], segment: Segment | None, ids: Sequence[str],
              hashes: Sequence[str | None], drop: Iterable[int], deleted_rows: np.ndarray) -> None:
        """Take in a commit just written (its manifest, new segment and deleted rows) without
        reading its files back."""
        keys = self.read_keys()
        self.manifest = manifest
        deleted = self.deleted.view()
        for row in drop:
            deleted[row] = True
            keys.row_of.pop(keys.ids[row], None)
        self.deleted_rows = deleted_rows
        if segment is not None:
            base = self.rows
            self.append(segment)
            keys.ids.extend(ids)
            keys.hashes.extend(hashes)
            for j, item_id in enumerate(ids):
                keys.row_of[item_id] = base + j


def load_snapshot(folder: Path, attempts: int = 10) -> Snapshot:
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
            return _map_files(folder, manifest)
        except FileNotFoundError as exc:  # a writer collected a file of an older manifest
            last = exc
            continue
    raise IndexStoreError(f"{folder}: the index kept changing while being read ({last})")


def _map_files(folder: Path, manifest: dict[str, Any]) -> Snapshot:
    dim = int(manifest["dim"])
    # the deleted-rows file is the only one a writer replaces: read it first
    deleted_rows = read_deleted(folder / manifest["deleted"]) if manifest.get("deleted") else np.zeros(0, np.int64)
    snapshot = Snapshot(manifest, deleted_rows=deleted_rows)
    vectors = manifest.get("compact") is None
    for seg in manifest["segments"]:
        snapshot.append(Segment(folder, seg["name"], seg["rows"], snapshot.rows, dim, vectors=vectors))
    snapshot.deleted.view()[deleted_rows] = True
    return snapshot
