"""One registry type for everything umr loads by name: embedders, rerankers.

A :class:`Registry` holds short names (``gme-2b``, ``ms-marco-minilm``) as :class:`ModelSpec`
entries and families as ``"module:Class"`` strings whose class has ``from_pretrained(path, *,
device, **options)``. Loading is the same two steps everywhere: :meth:`Registry.resolve` (a short
name, hub id or folder to a local folder, its family and its options) and
:meth:`Registry.instantiate` (options checked against the family's signature, the device checked,
then the family's ``from_pretrained``). How a folder is found (the hub cache) and how its family is
read from its files are the caller's (:mod:`umr.models.registry`, :mod:`umr.rerank.registry`),
passed in as functions, so this leaf module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

from .devices import check_device


@dataclass(frozen=True)
class ModelSpec:
    """A short name: where its weights live, which family loads them, and its defaults."""

    name: str
    family: str
    source: str | Callable[[], str]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    def resolve_source(self) -> str:
        return self.source() if callable(self.source) else self.source


class UnsupportedOption(TypeError):
    """An option the model's family does not take (e.g. image-token bounds for a text model)."""

    def __init__(self, model: str, family: str, options: list[str], accepted: list[str]):
        self.model = model
        self.family = family
        self.options = options
        self.accepted = accepted
        super().__init__(f"model {model!r} ({family} family) does not take {', '.join(options)}; "
                         f"it takes {', '.join(accepted) or 'no options'}")


def check_options(family_class: type, options: dict[str, Any], *, model: str, family: str) -> None:
    """Refuse, before any loading, options that the family's ``from_pretrained`` does not name."""
    params = inspect.signature(family_class.from_pretrained).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the family checks its own options
    accepted = [name for name, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "device"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UnsupportedOption(model, family, unknown, accepted)


@dataclass
class Resolved:
    """What a name resolves to before anything is loaded."""

    key: str  # what the user asked for: a short name, hub id or folder
    spec: ModelSpec | None
    folder: Path
    family: str
    options: dict[str, Any]  # the short name's defaults, then the caller's options


#: finds the local folder of a source (a folder, or a hub id in the cache): ``locate(source, shown_as=key)``
Locate = Callable[..., Path]
#: reads a folder's family from its files: ``detect(folder, source)``
Detect = Callable[[Path, str], str]


class Registry:
    """Short names and families of one kind of model (``kind``: ``model``, ``reranker``), and loading."""

    def __init__(self, kind: str, families: dict[str, str]):
        self.kind = kind
        #: family name -> ``"module:Class"`` (imported only when the family is loaded)
        self.families = families
        #: short name -> its spec
        self.specs: dict[str, ModelSpec] = {}

    def register(self, spec: ModelSpec) -> ModelSpec:
        self.specs[spec.name] = spec
        return spec

    def list(self) -> list[ModelSpec]:
        return list(self.specs.values())

    def source(self, key: str) -> str:
        """The folder or hub id behind ``key`` (a short name's source, else ``key`` itself)."""
        spec = self.specs.get(key)
        return spec.resolve_source() if spec else key

    def family_class(self, family: str) -> type:
        if family not in self.families:
            raise ValueError(f"unknown {self.kind} family {family!r}: use one of {', '.join(self.families)}")
        module_name, class_name = self.families[family].split(":")
        return getattr(importlib.import_module(module_name), class_name)

    def resolve(self, key: str, options: dict[str, Any], *, locate: Locate, detect: Detect,
                dtype: str | None = None, family: str | None = None) -> Resolved:
        """The local folder, family (``family``, else the short name's, else ``detect``) and options
        (the short name's defaults, then ``options``, then ``dtype``) of ``key``."""
        spec = self.specs.get(key)
        source = self.source(key)
        folder = locate(source, shown_as=key)
        family = family or (spec.family if spec else detect(folder, source))
        if family not in self.families:
            raise ValueError(f"unknown {self.kind} family {family!r}: use one of {', '.join(self.families)}")
        merged = {**(spec.defaults if spec else {}), **options}
        if dtype is not None:
            merged["dtype"] = dtype
        return Resolved(key, spec, folder, family, merged)

    def instantiate(self, resolved: Resolved, *, device: str = "cpu",
                    quiet: Callable[[], ContextManager] = contextlib.nullcontext) -> Any:
        """The family's ``from_pretrained`` on the resolved folder, named ``resolved.key``; options
        the family does not take and an unusable device are refused before any loading; ``quiet``
        wraps the loading (it hides the loading library's own bars and reports)."""
        family_class = self.family_class(resolved.family)
        check_options(family_class, resolved.options, model=resolved.key, family=resolved.family)
        check_device(device)
        with quiet():
            loaded = family_class.from_pretrained(resolved.folder, device=device, **resolved.options)
        loaded.name = resolved.key
        return loaded
