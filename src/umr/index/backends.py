"""The store backends by name: ``faiss`` (:class:`~umr.index.store.FlatStore`, the default: an
embedded folder) and ``milvus`` (:class:`~umr.index.milvus.MilvusStore`: Milvus Lite or a server).
A manifest names its backend; one without a name is ``faiss`` (indexes from before Milvus)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from collections.abc import Callable

from .base import IndexStoreError, VectorStore, read_manifest
from .milvus import MilvusStore
from .multivector.store import MultiVectorStore
from .store import FlatStore

DEFAULT_BACKEND = "faiss"


@dataclass(frozen=True)
class Backend:
    """How one backend makes a new store and opens an existing one."""

    name: str
    create: Callable[..., VectorStore]
    open: Callable[..., VectorStore]


def _create_faiss(folder: Path, *, dim: int, config: dict[str, Any], uri: str | None, collection: str) -> VectorStore:
    if uri is not None:
        raise ValueError("--uri is for the Milvus backend; the faiss index lives in its folder")
    return FlatStore.create(folder, dim=dim, config=config)


def _create_milvus(folder: Path, *, dim: int, config: dict[str, Any], uri: str | None, collection: str) -> VectorStore:
    return MilvusStore.create(folder, dim=dim, config=config, uri=uri or str(Path(folder) / "milvus.db"),
                              collection=collection)


def _open_faiss(folder: Path, *, writable: bool, manifest: dict[str, Any]) -> VectorStore:
    return FlatStore.open(folder, writable=writable)


def _open_milvus(folder: Path, *, writable: bool, manifest: dict[str, Any]) -> VectorStore:
    return MilvusStore.open(folder, writable=writable, manifest=manifest)


def _create_multivector(folder: Path, *, dim: int, config: dict[str, Any], uri: str | None,
                        collection: str) -> VectorStore:
    return MultiVectorStore.create(folder, dim=dim, config=config)


def _open_multivector(folder: Path, *, writable: bool, manifest: dict[str, Any]) -> VectorStore:
    return MultiVectorStore.open(folder, writable=writable, manifest=manifest)


BACKENDS: dict[str, Backend] = {
    "faiss": Backend("faiss", _create_faiss, _open_faiss),
    "milvus": Backend("milvus", _create_milvus, _open_milvus),
    # issue 24: late-interaction models' token vectors (Index.create picks it for a MultiVectorEmbedder)
    "multivector": Backend("multivector", _create_multivector, _open_multivector),
}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}: use {' or '.join(BACKENDS)}") from None


def create_store(folder: str | Path, backend_name: str, *, dim: int, config: dict[str, Any], uri: str | None = None,
                 collection: str = "umr") -> VectorStore:
    """A new, empty store of ``backend_name`` in ``folder`` (``uri``, ``collection``: Milvus's)."""
    return backend(backend_name).create(Path(folder), dim=dim, config=config, uri=uri, collection=collection)


def open_store(folder: str | Path, *, writable: bool = False) -> VectorStore:
    """The store of the index in ``folder``, of the backend its manifest names."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    name = manifest.get("backend", DEFAULT_BACKEND)
    if name not in BACKENDS:
        raise IndexStoreError(f"{folder}: the manifest names backend {name!r}, which this umr does not know "
                              f"({', '.join(BACKENDS)})")
    return BACKENDS[name].open(folder, writable=writable, manifest=manifest)
