"""Who may touch a store when: one writing process per folder (``.lock``, held with ``flock``),
and inside a process, searches together but never during a commit's in-memory changes.
"""

from __future__ import annotations

import fcntl
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from ..base import IndexLocked

LOCK_FILE = ".lock"


def acquire_writer_lock(folder: Path) -> IO[str]:
    """The folder's writer lock, or :class:`~umr.index.base.IndexLocked` at once if another
    process holds it (a second writer fails with a clear line instead of waiting unseen)."""
    handle = open(folder / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise IndexLocked(f"{folder} is being written by another process (umr index running?); "
                          f"wait for it to finish") from None
    return handle


def release_writer_lock(handle: IO[str]) -> None:
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


class ReadWriteLock:
    """Searches run together; a commit that changes what they read (FAISS's growing buffer)
    waits for them and holds them off."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._readers:
                self._cond.wait()
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
