"""The reference each family is checked against (see :mod:`.base`)."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Reference
from .qwen_vl import GmeReference, Qwen3VLReference
from .text import SentenceTransformersReference

__all__ = ["GmeReference", "NoReference", "Qwen3VLReference", "Reference", "SentenceTransformersReference",
           "reference_for"]


class NoReference(ValueError):
    """The family has no reference umr can run."""


#: family name -> its reference (built from the checkpoint folder, a device and a dtype)
REFERENCES: dict[str, type[Reference]] = {
    "text": SentenceTransformersReference,
    "gme": GmeReference,
    "qwen3vl": Qwen3VLReference,
}


def reference_for(family: str, folder: Path, *, device: str, dtype: torch.dtype) -> Reference:
    """The reference of ``family``, loaded from ``folder`` at its authors' default settings."""
    if family not in REFERENCES:
        raise NoReference(f"no reference for the {family!r} family yet (umr verify covers "
                          f"{', '.join(sorted(REFERENCES))})")
    return REFERENCES[family](Path(folder), device=device, dtype=dtype)
