"""Typed outputs, in one leaf place so that any layer can produce or read them.

:class:`EmbedResult` is what an embedder returns, :class:`Hit` what a vector store returns,
:class:`Result` what a search returns (and what a reranker reorders), :class:`Summary` what an
indexing run did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .entries import ReadReport
from .items import ItemError


@dataclass
class EmbedResult:
    """Vectors for the items that could be embedded, and why the others could not.

    ``vectors[j]`` belongs to input position ``indices[j]``; ``indices`` is increasing.
    """

    vectors: np.ndarray
    indices: np.ndarray
    errors: list[ItemError] = field(default_factory=list)


@dataclass
class Hit:
    """One stored record a vector store found, with its inner-product score."""

    score: float
    record: dict[str, Any]

    @property
    def id(self) -> str:
        return self.record["id"]


@dataclass
class Result:
    """One search result: its rank (from 1), score, id, and what the index stored about it."""

    rank: int
    score: float
    id: str
    modality: str
    path: str | None
    text: str | None
    via: str | None
    meta: dict[str, Any]

    @property
    def start(self) -> float | None:
        """A video segment's first second (``meta["start"]``); None for other results."""
        return self.meta.get("start") if self.modality.startswith("video") else None

    @property
    def end(self) -> float | None:
        """A video segment's last second (``meta["end"]``); None for other results."""
        return self.meta.get("end") if self.modality.startswith("video") else None

    def to_dict(self) -> dict[str, Any]:
        """As JSON; a video result also carries ``start`` and ``end`` (seconds) at the top."""
        out = {"rank": self.rank, "score": self.score, "id": self.id, "modality": self.modality,
               "path": self.path, "text": self.text, "via": self.via, "meta": self.meta}
        if self.start is not None:
            out.update(start=self.start, end=self.end)
        return out

    @classmethod
    def of(cls, rank: int, hit: Hit) -> "Result":
        """The result at ``rank`` for a store's hit."""
        r = hit.record
        return cls(rank=rank, score=hit.score, id=r["id"], modality=r.get("modality") or "",
                   path=r.get("path"), text=r.get("text"), via=r.get("via"), meta=r.get("meta") or {})


@dataclass
class Summary:
    """What one indexing run (``Index.add`` / ``Index.index_corpus``) did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    #: items with no representation under the model (e.g. photos without text, text-only model)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: what the corpus reader passed over (ignored files) and reshaped (passages, cut texts)
    read: ReadReport | None = None

    def line(self) -> str:
        return (f"added {self.added}, updated {self.updated}, unchanged {self.unchanged}, "
                f"deleted {self.deleted}, skipped {len(self.skipped)}, errors {len(self.errors)}")
