"""Fingerprints for ``training.json``: which base model and which data files a model came from."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: files larger than this are fingerprinted by size plus their first and last MiB
_WHOLE = 64 << 20
_EDGE = 1 << 20


def file_fingerprint(path: Path) -> str:
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as handle:
        if size <= _WHOLE:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(str(size).encode())
            digest.update(handle.read(_EDGE))
            handle.seek(size - _EDGE)
            digest.update(handle.read(_EDGE))
    return "sha256:" + digest.hexdigest()


def folder_fingerprint(folder: Path, *, skip: set[str] = frozenset()) -> str:
    """One digest over every file's relative path and fingerprint (names in ``skip`` ignored)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder)
        if rel.parts[0] in skip:
            continue
        digest.update(str(rel).encode())
        digest.update(file_fingerprint(path).encode())
    return "sha256:" + digest.hexdigest()


def source_fingerprint(path: Path) -> str:
    return folder_fingerprint(path, skip={"mbeir_images"}) if path.is_dir() else file_fingerprint(path)
