"""What the live records hold, kept so that asking is cheap: the metadata fields (to tell a user a
``where`` field is unknown) and the items per modality (``umr serve``'s /v1/stats asks on every page
load). Each is counted by one pass over the records on first use and kept current by commits.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any, Callable, Iterable, Sequence


def fields_of(record: dict[str, Any]) -> Iterable[str]:
    """The metadata fields a record has."""
    return (record.get("meta") or {}).keys()


def modality_of(record: dict[str, Any]) -> str:
    return record.get("modality") or ""


class Catalog:
    """The metadata fields and modality counts of a store's live records, or None until counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fields: set[str] | None = None
        self._modalities: Counter[str] | None = None

    def fields(self) -> set[str] | None:
        with self._lock:
            return None if self._fields is None else set(self._fields)

    def keep_fields(self, fields: set[str]) -> None:
        """Every live record's fields, from a pass that read them all."""
        with self._lock:
            self._fields = fields

    def modality_counts(self) -> dict[str, int] | None:
        with self._lock:
            return None if self._modalities is None else _nonzero(self._modalities)

    def keep_modalities(self, counts: Counter[str]) -> dict[str, int]:
        with self._lock:
            self._modalities = counts
            return _nonzero(counts)

    def committed(self, added: Sequence[dict[str, Any]], dropped: Callable[[], Iterable[dict[str, Any]]]) -> None:
        """Take in a commit: the records it ``added`` and those it replaced or deleted (read only
        when modalities are being counted: their lines are still on disk)."""
        if self._modalities is not None:
            gone = [modality_of(r) for r in dropped()]
            with self._lock:
                self._modalities.subtract(gone)
                self._modalities.update(modality_of(r) for r in added)
        if self._fields is not None:
            for r in added:
                self._fields.update(fields_of(r))

    def forget(self, *, modalities: bool = True) -> None:
        """Count again on next use: the store maps another snapshot (a compaction keeps the
        live rows, hence their modalities)."""
        with self._lock:
            self._fields = None
            if modalities:
                self._modalities = None


def _nonzero(counts: Counter[str]) -> dict[str, int]:
    return {m: n for m, n in counts.items() if n}
