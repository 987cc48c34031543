"""The store's data files: a segment (one commit's vectors, records and keys) and the deleted-rows
file. Each is written whole (:mod:`umr.core.atomic`) before a manifest names it and never changed
afterwards, so readers open them on demand and hold nothing open.

The on-disk format of the rows lives here alone; what a snapshot is (:mod:`.manifest`) and what
is done with the vectors (:mod:`.planning`) build on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from ...core.atomic import write_bytes_atomic
from ..base import IndexStoreError, json_line

#: rows gathered at once when a large matrix is copied (compaction, a graph's working copy)
CHUNK_ROWS = 65_536
#: the files of a segment named ``seg-NNNNNN``
SEGMENT_SUFFIXES = (".npy", ".jsonl", ".keys")
#: those of a quantised index's segment: its vectors live in the index's compact files (:mod:`umr.index.compact`)
RECORD_SUFFIXES = SEGMENT_SUFFIXES[1:]


def segment_suffixes(vectors: bool) -> tuple[str, ...]:
    return SEGMENT_SUFFIXES if vectors else RECORD_SUFFIXES


def segment_name(number: int) -> str:
    return f"seg-{number:06d}"


def deleted_name(number: int) -> str:
    return f"del-{number:06d}.npy"


def write_segment(folder: Path, name: str, lines: Iterable[bytes], ids: Sequence[str],
                  hashes: Sequence[str | None], vectors_rows: int, dim: int,
                  vector_blocks: Iterable[np.ndarray] | None) -> None:
    """A segment's files, each whole or not at all; the commit fsyncs the folder once for all.
    ``vector_blocks`` None: a quantised index's segment, its vectors kept elsewhere."""
    write_bytes_atomic(folder / f"{name}.jsonl", lambda h: h.writelines(line + b"\n" for line in lines),
                       sync_dir=False)
    write_bytes_atomic(folder / f"{name}.keys", json_line([list(ids), list(hashes)]).encode(), sync_dir=False)
    if vector_blocks is not None:
        _write_npy(folder / f"{name}.npy", vectors_rows, dim, vector_blocks)


def write_deleted(path: Path, rows: np.ndarray) -> None:
    """The sorted global row numbers deleted so far (int64 ``.npy``)."""
    write_bytes_atomic(path, lambda handle: np.save(handle, np.asarray(rows, np.int64), allow_pickle=False),
                       sync_dir=False)


def read_deleted(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False).astype(np.int64)


def _write_npy(path: Path, rows: int, dim: int, blocks: Iterable[np.ndarray]) -> None:
    """A float32 ``.npy`` written block by block (compacting never gathers the whole matrix)."""

    def write(handle) -> None:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rows, dim)})
        for block in blocks:
            handle.write(np.ascontiguousarray(block, dtype="<f4").data)

    write_bytes_atomic(path, write, sync_dir=False)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, reading nothing else."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    return shape, dtype


class Segment:
    """One commit's files, read on demand and never held open (an index of thousands of
    segments must not hold thousands of file descriptors). ``vectors`` False: a quantised
    index's segment, records only."""

    def __init__(self, folder: Path, name: str, rows: int, start: int, dim: int, *, vectors: bool = True):
        self.name, self.rows, self.start = name, int(rows), int(start)
        self._base = folder / name
        self._ends: np.ndarray | None = None
        self._where = f"{folder}: segment {name}"
        if vectors:
            shape, dtype = _npy_shape(self.path(".npy"))
            if shape != (self.rows, dim) or dtype != np.float32:
                raise IndexStoreError(f"{self._where} does not match the manifest (vectors "
                                      f"{shape}, expected {(self.rows, dim)})")
        for suffix in RECORD_SUFFIXES:
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
