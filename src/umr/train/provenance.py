"""Fingerprints of training data for ``training.json`` (the base model's is the model identity's
:func:`umr.models.identity.files_fingerprint`): a data file by its bytes, the one rule of
:func:`umr.core.fingerprint.file_digest`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..core.fingerprint import file_digest


def source_fingerprint(path: Path) -> str:
    """A data file's digest, or for a folder (M-BEIR) one digest over its files but the images."""
    if not path.is_dir():
        return file_digest(path)
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path)
        if rel.parts[0] == "mbeir_images":
            continue
        digest.update(str(rel).encode("utf-8", "surrogateescape") + b"\0" + file_digest(file).encode())
    return digest.hexdigest()
