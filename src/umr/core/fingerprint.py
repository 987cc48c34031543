"""Content fingerprints: one hash of everything that determines an item's vector.

``item_fingerprint`` covers the role (query or candidate), the text, the instruction (queries
only: candidates are embedded without one), the video's content and sampling, and the image's *content* — the bytes of an image
file, the given bytes, or the decoded pixels of an in-memory PIL image — never its path, so an
image overwritten in place is noticed and the same picture under two paths is one fingerprint.
Folders, items JSONL, M-BEIR pools, ``Index.add`` and the evaluation cache all use it.

Hashing every file on every run would make a re-run of a large unchanged corpus slow, so file
digests are remembered by the file's stat signature (path, size, mtime, ctime, inode): a file
whose signature is unchanged is not read again. ``ctime`` changes on every write and cannot be
set back by tools that preserve mtime (``cp -p``, ``rsync -t``), so a changed file is noticed.
A :class:`FileDigests` keeps that memory on disk (the index keeps one per index); without one a
bounded in-process memory serves repeated looks at the same file within one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from .items import Item

#: 40 hex characters: the evaluation cache stores fingerprints in fixed-width ``U40`` arrays
DIGEST_SIZE = 20


def item_fingerprint(item: Item, *, digests: "FileDigests | None" = None, extra: Sequence[str] = ()) -> str:
    """The hash of what determines ``item``'s vector (40 hex characters).

    ``extra``: what the item will be built from but does not hold yet (e.g. the digest of the
    text file a folder item is read from, a PDF page number); it is hashed with the rest.
    Never raises: an unreadable image file gets a fingerprint naming it as unreadable, so the
    item's load reports the error and a later run notices when the file appears.
    """
    parts = ["q" if item.is_query else "c", item.text, image_key(item.image, digests=digests),
             item.instruction if item.is_query else None, list(extra)]
    if item.error is not None:  # two records failed for different reasons are not one item
        parts.append(item.error)
    if item.video is not None:  # appended only when present: fingerprints of other items stay as they were
        frames = item.video if isinstance(item.video, tuple) else (item.video,)
        parts.append(["video", [image_key(frame, digests=digests) for frame in frames], item.fps, item.max_frames,
                      item.video_start, item.video_end])
    payload = json.dumps(parts).encode("ascii")  # ASCII escapes: lone surrogates hash too
    return hashlib.blake2b(payload, digest_size=DIGEST_SIZE).hexdigest()


def image_key(image, *, digests: "FileDigests | None" = None) -> str | None:
    """The content of an image as a short string: file or bytes digest, or decoded pixels."""
    if image is None:
        return None
    if isinstance(image, (str, os.PathLike)):
        try:
            return "file:" + file_digest(image, digests=digests)
        except OSError as exc:
            return f"unreadable:{os.fspath(image)}:{type(exc).__name__}"
    if isinstance(image, (bytes, bytearray)):
        return "bytes:" + hashlib.blake2b(bytes(image), digest_size=DIGEST_SIZE).hexdigest()
    # a PIL image: the decoded pixels, with the mode and size that give them meaning
    h = hashlib.blake2b(f"{image.mode}:{image.size}".encode(), digest_size=DIGEST_SIZE)
    h.update(image.tobytes())
    return "pixels:" + h.hexdigest()


def file_digest(path: str | os.PathLike, *, digests: "FileDigests | None" = None) -> str:
    """The blake2b digest of a file's bytes, not re-read while its stat signature is unchanged.

    Raises ``OSError`` for a file that cannot be read.
    """
    st = os.stat(path)
    key = os.fsencode(os.path.abspath(path))
    signature = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if digests is not None:
        known = digests.get(key, signature)
        if known is not None:
            return known
        digest = _hash_file(path)
        digests.put(key, signature, digest)
        return digest
    return _memo_digest(key, *signature)


@lru_cache(maxsize=65536)
def _memo_digest(key: bytes, size: int, mtime_ns: int, ctime_ns: int, inode: int) -> str:
    return _hash_file(os.fsdecode(key))


def _hash_file(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FileDigests:
    """File digests remembered on disk by stat signature (SQLite: lookups without loading all).

    Losing the file only costs re-hashing; a stale row is never used because the whole stat
    signature must match.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._db = sqlite3.connect(str(self.path))
        self._db.execute("CREATE TABLE IF NOT EXISTS digests (path BLOB PRIMARY KEY, size INTEGER, "
                         "mtime INTEGER, ctime INTEGER, inode INTEGER, digest TEXT)")
        self._pending = 0

    def get(self, key: bytes, signature: tuple[int, int, int, int]) -> str | None:
        row = self._db.execute("SELECT size, mtime, ctime, inode, digest FROM digests WHERE path = ?",
                               (key,)).fetchone()
        if row is not None and tuple(row[:4]) == signature:
            return row[4]
        return None

    def put(self, key: bytes, signature: tuple[int, int, int, int], digest: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?, ?)", (key, *signature, digest))
        self._pending += 1
        if self._pending >= 1000:
            self.save()

    def save(self) -> None:
        self._db.commit()
        self._pending = 0

    def close(self) -> None:
        self.save()
        self._db.close()

    def __enter__(self) -> "FileDigests":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
