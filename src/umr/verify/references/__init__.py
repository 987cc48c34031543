"""The reference each family is checked against (see :mod:`.base`): the family's best available
one (``auto``), or one the user supplies as a Python file (:func:`reference_from_file`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

from ...core.items import Item
from .base import Reference
from .clip_sf import clip_sf_reference
from .colqwen import colqwen_reference
from .mmembed import mmembed_reference
from .qwen_vl import GmeReference, Qwen3VLReference
from .qwen_video import Qwen3VLWithVideoReference
from .text import SentenceTransformersReference

__all__ = ["EmbedsItems", "GmeReference", "NoReference", "Qwen3VLReference", "Reference",
           "SentenceTransformersReference", "reference_for", "reference_from_file"]


class NoReference(ValueError):
    """The family has no reference umr can run, or a reference file does not keep the interface."""


#: family name -> its best available reference, built from the checkpoint folder, a device, a
#: dtype and the options the model was loaded with (which weights: CLIP-SF's ``checkpoint``)
REFERENCES: dict[str, Callable[[Path, str, torch.dtype, dict[str, Any]], Reference]] = {
    "text": lambda folder, device, dtype, options: SentenceTransformersReference(folder, device=device, dtype=dtype),
    "gme": lambda folder, device, dtype, options: GmeReference(folder, device=device, dtype=dtype),
    "qwen3vl": lambda folder, device, dtype, options: Qwen3VLWithVideoReference(folder, device=device, dtype=dtype),
    "mm-embed": lambda folder, device, dtype, options: mmembed_reference(folder, device=device, dtype=dtype),
    "clip-sf": lambda folder, device, dtype, options: clip_sf_reference(folder, device=device, dtype=dtype,
                                                                        options=options),
    "colqwen": lambda folder, device, dtype, options: colqwen_reference(folder, device=device, dtype=dtype),
}


def reference_for(family: str, folder: Path, *, device: str, dtype: torch.dtype,
                  options: dict[str, Any] | None = None) -> Reference:
    """The best reference of ``family`` this machine can run (``--reference auto``): the authors'
    own code where it is installed or shipped in ``folder`` and runs here, else umr's reference
    loop; at the authors' default settings. ``options``: what the model was loaded with."""
    if family not in REFERENCES:
        raise NoReference(f"no reference for the {family!r} family yet (umr verify covers "
                          f"{', '.join(sorted(REFERENCES))})")
    return REFERENCES[family](Path(folder), device, dtype, dict(options or {}))


@runtime_checkable
class EmbedsItems(Protocol):
    """What ``load`` of a reference file returns: something that embeds one item."""

    def embed(self, item: Item) -> Any: ...


class ScriptReference(Reference):
    """A reference from a user's Python file: its ``load(folder, *, device, dtype)`` gives an
    object whose ``embed(item)`` returns a vector (or a token matrix), normalised here."""

    def __init__(self, path: Path, embedder: EmbedsItems, summary: str):
        self.embedder = embedder
        self.description = f"{path}" + (f" ({summary})" if summary else "")

    def embed(self, item: Item) -> np.ndarray:
        out = self.embedder.embed(item)
        vector = np.asarray(out.float().cpu() if isinstance(out, torch.Tensor) else out, dtype=np.float32)
        norms = np.linalg.norm(vector, axis=-1, keepdims=True)
        return vector / np.where(norms > 0, norms, 1.0)


def reference_from_file(path: str | Path, folder: Path, *, device: str, dtype: torch.dtype) -> Reference:
    """The reference a Python file provides (``--reference PATH``): a module with
    ``load(folder, *, device, dtype)`` returning an object with ``embed(item) -> vector``; a
    :class:`Reference` it returns is used as is (its ``description`` is reported), anything else
    is described by the file and its docstring's first line."""
    path = Path(path).expanduser()
    if not path.is_file() or path.suffix != ".py":
        raise NoReference(f"--reference {path}: not a Python file (give auto or a .py file with "
                          f"load(folder, *, device, dtype))")
    spec = importlib.util.spec_from_file_location(f"umr_verify_reference_{abs(hash(str(path.resolve())))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - the user's file failing to import is one line
        raise NoReference(f"--reference {path}: cannot be imported ({type(exc).__name__}: {exc})") from None
    if not callable(module.__dict__.get("load")):
        raise NoReference(f"--reference {path}: defines no load(folder, *, device, dtype)")
    try:
        loaded = module.load(Path(folder), device=device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise NoReference(f"--reference {path}: load() failed ({type(exc).__name__}: {exc})") from None
    if isinstance(loaded, Reference):
        return loaded
    if not isinstance(loaded, EmbedsItems):
        raise NoReference(f"--reference {path}: load() returned {type(loaded).__name__}, which has no embed(item)")
    summary = (module.__doc__ or "").strip().splitlines()[0] if (module.__doc__ or "").strip() else ""
    return ScriptReference(path, loaded, summary)
