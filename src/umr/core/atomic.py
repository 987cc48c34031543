"""Files written whole or not at all: the one way umr replaces a file.

A writer fills a temporary file beside the target (``NAME.tmp``, in the same folder so the rename
never crosses file systems), fsyncs it, renames it over the target (atomic on POSIX and Windows)
and fsyncs the folder so the rename itself survives a power cut. A reader sees the old file or
the new one, never a torn one; a process killed mid-write leaves at most ``NAME.tmp`` behind,
which the next write replaces (the index's garbage collection also removes it).

:func:`atomic_path` is the mechanism (for writers that need a path: FAISS, PIL); :func:`atomic_writer`
gives an open handle; :func:`write_bytes_atomic` and :func:`write_text_atomic` write a value at once.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterator

#: what the temporary file's name adds to the target's
TMP_SUFFIX = ".tmp"


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a folder's entries (a rename, a new file) durable. Best effort: where a folder cannot be
    opened or synced (Windows, some network file systems) the rename is still atomic, only not
    yet flushed."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(source: str | os.PathLike, target: str | os.PathLike, *, sync_dir: bool = True) -> None:
    """Rename ``source`` (a file or a folder, complete and synced) over ``target``, then fsync the
    folder holding it (unless ``sync_dir`` is False: a caller renaming several files syncs once)."""
    os.replace(source, target)
    if sync_dir:
        fsync_dir(Path(target).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, sync_dir: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; when the block ends the file is
    fsynced and renamed over ``path`` (:func:`replace_durably`). If the block raises, the temporary
    file is removed and ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        replace_durably(tmp, path, sync_dir=sync_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, *, text: bool = False, encoding: str = "utf-8",
                  sync_dir: bool = True) -> Iterator[IO[Any]]:
    """An open handle (binary, or text in ``encoding``) whose contents replace ``path`` whole when
    the block ends (see :func:`atomic_path`)."""
    with atomic_path(path, sync_dir=sync_dir) as tmp:
        with open(tmp, "w" if text else "wb", encoding=encoding if text else None) as handle:
            yield handle


def write_bytes_atomic(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], Any], *,
                       sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data``: bytes, or a function that writes them to the binary handle it
    is given (large files written in blocks, ``np.save``, ``torch.save``)."""
    with atomic_writer(path, sync_dir=sync_dir) as handle:
        if callable(data):
            data(handle)
        else:
            handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      sync_dir: bool = True) -> None:
    """Replace ``path`` with ``text``."""
    with atomic_writer(path, text=True, encoding=encoding, sync_dir=sync_dir) as handle:
        handle.write(text)
