"""Which model an index embeds with: the one recorded when it was built, loaded as it was built,
and any other checked against it.

The index records its model's :class:`~umr.models.identity.ModelIdentity` (resolved folder or
hub id and revision, files fingerprint, family and every option that changes vectors), so it is
searched from any working directory without naming the model, any spelling of the same model is
accepted, and another model is refused with a message naming both.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..models.identity import ModelIdentity, model_identity
from ..models.registry import load_model
from .base import IndexStoreError, VectorStore


class ModelMismatch(IndexStoreError):
    """The index was built with another model."""


def model_record(model, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the index stores about its model: name and dimension, the ``load_model`` options
    that rebuild it (``dtype`` included), and its identity."""
    return {"name": str(model.name), "dim": int(model.dim), "options": dict(options or {}),
            "identity": model_identity(model).to_dict()}


class ModelBinding:
    """The model of the index in ``store``: the one given, or the recorded one loaded on first use
    (on ``device``, in ``dtype`` when one is asked for)."""

    def __init__(self, folder: Path, store: VectorStore, *, model=None, options: dict[str, Any] | None = None,
                 device: str | None = None, dtype: str | None = None):
        self.folder, self.store = folder, store
        self._model = model
        self._options = options or {}
        self.device, self.dtype = device, dtype

    @property
    def name(self) -> str:
        return self.store.config["model"]["name"]

    @property
    def recorded_identity(self) -> ModelIdentity | None:
        data = self.store.config["model"].get("identity")
        return ModelIdentity.from_dict(data) if data else None

    def check(self, model, *, allow_dtype: bool = False, recorded_load: bool = False) -> None:
        """Raise :class:`ModelMismatch` unless ``model`` computes the vectors the index holds
        (see :meth:`umr.index.Index.check_model`)."""
        recorded = self.recorded_identity
        if isinstance(model, (str, os.PathLike)):
            model = self.load(str(model))
        if recorded is None:
            return self._check_legacy(model)
        mine = model_identity(model)
        if not recorded.folder or not mine.folder:  # hand-built on one side: no files to compare
            diffs = ([f"name: {recorded.name!r} vs {mine.name!r}"] if recorded.name != mine.name else [])
            diffs += [d for d in recorded.differences(mine) if not d.startswith(("weights/", "family:"))]
        else:
            diffs = recorded.differences(mine)
        if allow_dtype:
            diffs = [d for d in diffs if not d.startswith("dtype:")]
        if diffs:
            raise ModelMismatch(
                f"index {self.folder} was built with {recorded.describe()}, not {mine.describe()}: "
                f"{'; '.join(diffs)} — vectors of different models cannot be compared; "
                f"{_mismatch_advice(diffs, recorded_load)}")

    def _check_legacy(self, model) -> None:
        recorded = self.store.config["model"]
        name, dim = str(model.name), int(model.dim)
        if name != recorded["name"] or dim != recorded["dim"]:
            raise ModelMismatch(
                f"index {self.folder} was built with model {recorded['name']!r} ({recorded['dim']}-d), "
                f"not {name!r} ({dim}-d): vectors of different models cannot be compared. Search it "
                f"with --model {recorded['name']} (or no --model), or build a new index for {name!r}")

    def load_options(self) -> dict[str, Any]:
        """The ``load_model`` options that give the index's vectors here (see
        :meth:`umr.index.Index.model_load_options`)."""
        recorded = self.recorded_identity
        options = dict(self._options)
        if self.dtype is not None:
            options["dtype"] = self.dtype
        elif "dtype" not in options and recorded is not None and not recorded.dtype_follows_machine \
                and "dtype" in recorded.options:
            options["dtype"] = recorded.options["dtype"]
        return options

    def load(self, name: str | None = None):
        """Load ``name`` (default: the recorded model, from where it was recorded) as the index
        was built, on the binding's device."""
        if name is None:
            recorded = self.recorded_identity
            name = recorded.source if recorded is not None else self.name
        return load_model(name, device=self.device or "cpu", **self.load_options())

    @property
    def model(self):
        """The bound model; the recorded one is loaded and checked on first use."""
        if self._model is None:
            model = self.load()
            self.check(model, allow_dtype=self.dtype is not None, recorded_load=True)
            self._model = model
        return self._model

    def use(self, model, *, allow_dtype: bool = False) -> None:
        self.check(model, allow_dtype=allow_dtype)
        self._model = model


def _mismatch_advice(diffs: list[str], recorded_load: bool) -> str:
    """What to do about a mismatch, claiming only what ``diffs`` shows."""
    if not recorded_load:
        hint = " (or search with --dtype to use another dtype on purpose)" \
            if all(d.startswith("dtype:") for d in diffs) else ""
        return f"search it without --model (the recorded model loads), or build a new index{hint}"
    if any(d.startswith("weights/") for d in diffs):
        return "the recorded model's files changed since the index was built: restore them, or build a new index"
    return ("the recorded model's files are unchanged, but loaded here with the recorded options it computes "
            "other vectors (another umr version?): build a new index")
