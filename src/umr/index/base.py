"""What every vector store gives the index: the :class:`VectorStore` contract, and the pieces the
stores share (search hits, filters and their matching rule, the manifest, durable writes, JSON
lines that survive any file name).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from ..core.atomic import write_bytes_atomic
from ..core.items import Modality
from ..core.results import Hit

MANIFEST = "manifest.json"
FORMAT = 1


class IndexStoreError(RuntimeError):
    """A problem with an index folder (missing, unreadable, locked), said in one line."""


class IndexLocked(IndexStoreError):
    pass


class StoreUnreachable(IndexStoreError):
    """The store's server cannot be reached, or stopped answering in the middle of the work.
    What was committed is kept: the same command, run again once the server answers, goes on
    from there (``umr index`` adds only what is missing)."""


# -- filters ---------------------------------------------------------------------------------------


def value_key(value: Any) -> tuple:
    """``value`` as a hashable key in which JSON types stay apart: ``true`` is not ``1``, ``"1"``
    is not ``1`` (``1`` and ``1.0`` are one JSON number), a list is its elements in order and an
    object its sorted items."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, str):
        return ("text", value)
    if isinstance(value, (list, tuple)):
        return ("list", tuple(value_key(v) for v in value))
    if isinstance(value, dict):
        return ("object", tuple(sorted((str(k), value_key(v)) for k, v in value.items())))
    return ("text", str(value))


def key_value(key: tuple) -> Any:
    """The JSON value a :func:`value_key` stands for."""
    kind = key[0]
    if kind == "null":
        return None
    if kind == "list":
        return [key_value(k) for k in key[1]]
    if kind == "object":
        return {k: key_value(v) for k, v in key[1]}
    return key[1]


@dataclass(frozen=True)
class Filter:
    """Which records a search may return: modalities and metadata field values (all must hold).

    ``where`` maps a metadata field to a value or a list of accepted values (any of them). A
    stored field matches a value when it equals it, or when it is a list that contains it
    (``{"tags": "red"}`` matches ``"tags": ["leather", "red"]``). Types are compared as stored,
    with no conversion: the number 2020 is not the text ``"2020"``, and ``true`` is not ``1``.
    ``None`` matches a field that is null or missing. A dict value matches an equal JSON object
    (the FAISS store; Milvus refuses object values). Both stores apply this one rule
    (:meth:`accepts`).
    """

    modalities: tuple[str, ...] | None = None
    #: (field, accepted values as :func:`value_key` keys), sorted by field
    where: tuple[tuple[str, tuple[tuple, ...]], ...] = ()

    @classmethod
    def make(cls, modality: "str | Sequence[str] | None" = None,
             where: dict[str, Any] | None = None) -> "Filter | None":
        mods = None
        if modality is not None:
            values = [modality] if isinstance(modality, str) else list(modality)
            mods = tuple(sorted({Modality.parse(m).value for m in values}))
        items = []
        for field, wanted in (where or {}).items():
            options = wanted if isinstance(wanted, (list, tuple)) else [wanted]
            items.append((str(field), tuple(dict.fromkeys(value_key(v) for v in options))))
        if mods is None and not items:
            return None
        return cls(mods, tuple(sorted(items)))

    @property
    def fields(self) -> list[str]:
        return [field for field, _ in self.where]

    def accepts(self, record: dict[str, Any]) -> bool:
        if self.modalities is not None and record.get("modality") not in self.modalities:
            return False
        meta = record.get("meta") or {}
        for field, accepted in self.where:
            have = meta.get(field)
            if value_key(have) in accepted:
                continue
            if isinstance(have, list) and any(value_key(v) in accepted for v in have):
                continue
            return False
        return True


# -- the contract ----------------------------------------------------------------------------------


@runtime_checkable
class VectorStore(Protocol):
    """Vectors with their records, by id: what :class:`~umr.index.Index` needs from a backend.

    Records are JSON objects with at least ``id``, ``hash`` (the content fingerprint),
    ``modality`` and ``meta``; a commit is all-or-nothing.
    """

    backend: str
    folder: Path
    writable: bool

    @property
    def config(self) -> dict[str, Any]: ...

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def ids(self) -> list[str]: ...

    def hashes(self) -> dict[str, str]:
        """id -> content fingerprint of every stored item."""

    def get(self, ids: Iterable[str]) -> list[dict[str, Any] | None]: ...

    def records(self) -> Iterable[dict[str, Any]]: ...

    def metadata_fields(self) -> set[str]:
        """The metadata fields that stored items have (to tell a user a ``where`` field is unknown)."""

    def modality_counts(self) -> dict[str, int]:
        """Live items per modality (``text``, ``image``, ``image,text``), without reading every
        record per call: ``umr serve``'s /v1/stats asks on every page load."""

    def check_id(self, item_id: str) -> str | None:
        """Why this store cannot hold an item with this id, or None if it can."""

    def search(self, queries: np.ndarray, k: int, *, filter: Filter | None = None,
               method: str | None = None, ef_search: int | None = None,
               rescore_k: int | None = None) -> list[list[Hit]]:
        """Top-``k`` records per query by inner product, best first (``k``, ``ef_search`` > 0;
        ``rescore_k``: a quantised store's rescoring depth, refused by a store that is not)."""

    def commit(self, records: Sequence[dict[str, Any]], vectors: np.ndarray,
               delete_ids: Iterable[str] = ()) -> None:
        """Upsert ``records`` with their ``vectors`` and delete ``delete_ids``, as one unit."""

    def delete(self, ids: Iterable[str]) -> int: ...

    def set_config(self, config: dict[str, Any]) -> None: ...

    def update_graph(self, *, m: int, ef_construction: int) -> None:
        """Keep an approximate (HNSW) search structure current, if the store keeps one itself."""

    def compact(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> "VectorStore": ...

    def __exit__(self, *exc: object) -> None: ...


def check_search_args(k: int, ef_search: int | None) -> None:
    """``ValueError`` unless ``k`` and ``ef_search`` (if given) are whole numbers of at least 1
    (a bool or a float is refused, not rounded): every search path and every store checks here."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive whole number of results, not {k!r}")
    if ef_search is not None and (isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer))
                                  or ef_search < 1):
        raise ValueError(f"ef_search must be a positive whole number, not {ef_search!r}")


# -- files -----------------------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogates(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def replace_surrogates(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (for stores that cannot hold them)."""
    return _SURROGATE.sub("\ufffd", text)


def json_line(value: Any) -> str:
    """``value`` as JSON that is valid UTF-8 even when it holds lone surrogates.

    ``os.fsdecode`` turns the bytes of a file name that is not UTF-8 into lone surrogates
    (``\\udce9`` for a Latin-1 ``é``), which UTF-8 cannot encode. They are written as JSON escapes,
    which ``json.loads`` turns back into the same surrogates: the name round-trips exactly, and
    all other text stays as itself.
    """
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if has_surrogates(text):  # only inside JSON strings, where an escape means the same
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Replace the index's manifest whole (:mod:`umr.core.atomic`): readers see the old or the new one."""
    write_bytes_atomic(Path(folder) / MANIFEST, json.dumps(manifest, indent=1).encode())


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexStoreError(f"{folder} is not a umr index (no {MANIFEST}); build one with `umr index`") from None
    except (OSError, ValueError) as exc:
        raise IndexStoreError(f"{path}: cannot read the index manifest ({exc})") from None
