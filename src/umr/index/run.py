"""One indexing run: plan each corpus entry against what the store holds, represent and embed
what changed, and commit in steps, so that a run killed at any point and started again does only
what is left. A bad entry becomes that entry's error, reported with its id; the rest go on."""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..core.entries import Entry
from ..core.items import Item, ItemError
from ..core.results import EmbedResult, Summary
from ..models.base import Embedder
from .base import VectorStore, json_line
from .embedding import ChunkEmbedder, LocalEmbedder
from .multivector.store import join_vectors, stored_vectors  # issue 24
from .representation import Unrepresentable

#: records keep this much of the text they were embedded from, for display
SNIPPET_CHARS = 300


class RunTarget(Protocol):
    """What a run writes into (:class:`umr.index.Index`): its store, its model, and how that
    model sees an item."""

    store: VectorStore

    @property
    def model(self) -> Embedder: ...

    def represent(self, item: Item) -> Item: ...


def run_entries(target: RunTarget, entries, summary: Summary, *, batch_size=None, commit_every=256,
                commit_seconds=30.0, progress=None, err_handle=None, source=None,
                skip_cache: dict | None = None, skip_handle=None,
                embedder: ChunkEmbedder | None = None) -> set[str]:
    """Plan each entry against the stored fingerprints, represent what must be embedded,
    embed it in chunks (``embedder``, default this process's model), commit every
    ``commit_every`` items or ``commit_seconds``.

    Returns every id the source holds (what ``prune`` keeps).
    """
    run = IndexingRun(target, summary, source=source, progress=progress, err_handle=err_handle,
                      skip_cache={} if skip_cache is None else skip_cache, skip_handle=skip_handle)
    committer = Committer(target.store, summary, commit_every=commit_every, commit_seconds=commit_seconds)
    chunk_size = max(1, min(commit_every, (batch_size or target.model.batch_size) * 2))
    embedder = embedder or LocalEmbedder(target.model)
    chunks: deque[list[tuple[Any, Item, bool]]] = deque()

    def ready_chunks():
        chunk: list[tuple[Any, Item, bool]] = []
        for entry in entries:
            planned = run.plan(entry)
            if planned is None:
                continue
            ready = run.represent(*planned)
            if ready is None:
                continue
            chunk.append(ready)
            if len(chunk) >= chunk_size:
                chunks.append(chunk)
                yield [item for _, item, _ in chunk]
                chunk = []
        if chunk:
            chunks.append(chunk)
            yield [item for _, item, _ in chunk]

    # the embedder may read chunks ahead; results come back in order, each for the oldest
    for result in embedder.map(ready_chunks(), batch_size=batch_size):
        committer.add(*run.accept(chunks.popleft(), result))
    committer.add([], np.zeros((0, target.store.dim), np.float32), run.dropped_updates())
    committer.flush()
    return run.seen


class IndexingRun:
    """The per-entry steps of one indexing run and what they have learned so far."""

    def __init__(self, target: RunTarget, summary: Summary, *, source, progress, err_handle, skip_cache,
                 skip_handle):
        self.target, self.summary, self.source = target, summary, source
        self.progress, self.err_handle = progress, err_handle
        self.skip_cache, self.skip_handle = skip_cache, skip_handle
        self.known = target.store.hashes()
        #: every id the source holds (kept by --prune)
        self.seen: set[str] = set()
        # ids whose item loaded (to be embedded) or is unchanged: a later duplicate is skipped;
        # an entry that failed to load does not take its id, so a good duplicate after it is used
        self.taken: dict[str, str | None] = {}
        # ids whose line failed while an older version is stored: that version is dropped at the
        # end, unless a duplicate of the id was indexed (or found unchanged) in the meantime
        self.failed_updates: list[str] = []

    def report(self, kind: str, item_id, reason: str, path=None, line=None) -> None:
        entry = {"id": item_id, "path": path, "line": line, "kind": kind, "error": reason}
        (self.summary.errors if kind == "error" else self.summary.skipped).append(entry)
        if self.err_handle is not None:
            self.err_handle.write(json_line(entry) + "\n")
            self.err_handle.flush()

    def done(self, n: int = 1) -> None:
        if self.progress:
            self.progress(n)

    def plan(self, entry):
        """``(entry, stored hash or None)`` for an entry to embed; None when it is unchanged,
        a duplicate, a collision with another source, or already known to be unrepresentable."""
        if isinstance(entry, ItemError):
            self.report("error", entry.item_id, entry.reason, line=entry.line)
            self.done()
            return None
        fingerprint = _record_hash(entry.fingerprint, entry.meta, self.source)
        self.seen.add(entry.id)
        if entry.id in self.taken:
            first = self.taken[entry.id]
            self.report("error", entry.id, "duplicate id in the corpus: an earlier entry with this id"
                        + (f" ({first})" if first and first != entry.path else "")
                        + " is used, this one was skipped", entry.path)
            self.done()
            return None
        refused = self.target.store.check_id(entry.id)
        if refused is not None:
            self.report("error", entry.id[:80] + ("..." if len(entry.id) > 80 else ""), refused, entry.path)
            self.done()
            return None
        old = self.known.get(entry.id)
        if old is not None and old == fingerprint:
            self.taken[entry.id] = entry.path
            self.summary.unchanged += 1
            self.done()
            return None
        if old is not None and self.source is not None:
            owner = (self.target.store.get([entry.id])[0] or {}).get("source")
            if owner != self.source:
                self.seen.discard(entry.id)
                self.report("error", entry.id, f"id collision: {entry.id!r} is already indexed from "
                            f"{owner or 'Index.add'}; this one was skipped (give one of the sources "
                            f"an --id-prefix, or other ids)", entry.path)
                self.done()
                return None
        cached = self.skip_cache.get(entry.id)
        if cached is not None and cached[0] == fingerprint and old is None:
            self.report("no representation", entry.id, cached[1], entry.path)
            self.done()
            return None
        entry.fingerprint = fingerprint
        return entry, old

    def represent(self, entry, old):
        """``(entry, item as the model sees it, is_update)``, or None when it cannot be loaded or
        has no representation under the model (reported; a stored old version is dropped)."""
        try:
            item = entry.load()
            item.metadata = {**item.metadata, **entry.meta, "kind": entry.kind}
            item = self.target.represent(item)
        except ItemError as exc:
            self.report("error", entry.id, exc.reason, entry.path)
            if old is not None:  # the file changed and is now bad: drop its old version
                self.failed_updates.append(entry.id)
            self.done()
            return None
        except Unrepresentable as exc:
            self.report("no representation", entry.id, exc.reason, entry.path)
            self.skip_cache[entry.id] = (entry.fingerprint, exc.reason)
            if self.skip_handle is not None:
                self.skip_handle.write(json_line({"id": entry.id, "fingerprint": entry.fingerprint,
                                                   "reason": exc.reason}) + "\n")
                self.skip_handle.flush()
            if old is not None:
                self.failed_updates.append(entry.id)
            self.done()
            return None
        self.taken[entry.id] = entry.path
        return entry, item, old is not None

    def accept(self, chunk, result: EmbedResult) -> tuple[list[dict], np.ndarray, list[str]]:
        """Records and vectors of the chunk's items that embedded, and the ids whose stored
        version must go because their new content cannot be embedded."""
        drop = []
        for err in result.errors:
            entry, _item, is_update = chunk[err.index]
            self.report("error", entry.id, err.reason, entry.path)
            if is_update:
                drop.append(entry.id)
        records = []
        for j in result.indices:
            entry, item, is_update = chunk[j]
            records.append(_record(entry, item, self.source))
            if is_update:
                self.summary.updated += 1
            else:
                self.summary.added += 1
        self.done(len(chunk))
        return records, stored_vectors(result.vectors), drop  # issue 24: or token matrices

    def dropped_updates(self) -> list[str]:
        return list(dict.fromkeys(i for i in self.failed_updates if i not in self.taken))


class Committer:
    """Collects embedded records and deletions; commits every N items or T seconds."""

    def __init__(self, store, summary: Summary, *, commit_every: int, commit_seconds: float):
        self.store, self.summary = store, summary
        self.commit_every, self.commit_seconds = commit_every, commit_seconds
        self.records: list[dict] = []
        self.vectors: list[np.ndarray] = []
        self.deletes: list[str] = []
        self.last = time.monotonic()

    def add(self, records: list[dict], vectors: np.ndarray, deletes: list[str]) -> None:
        self.records.extend(records)
        if len(records):
            self.vectors.append(vectors)
        self.deletes.extend(deletes)
        if len(self.records) >= self.commit_every or time.monotonic() - self.last >= self.commit_seconds:
            self.flush()

    def flush(self) -> None:
        if self.records or self.deletes:
            vectors = join_vectors(self.vectors, self.store.dim)  # issue 24: rows or token matrices
            self.store.commit(self.records, vectors, delete_ids=self.deletes)
            self.summary.deleted += len(self.deletes)
        self.records, self.vectors, self.deletes = [], [], []
        self.last = time.monotonic()


def read_skip_cache(path: Path) -> dict[str, tuple[str, str]]:
    """id -> (fingerprint, reason); a line cut short by a crash is ignored."""
    cache: dict[str, tuple[str, str]] = {}
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    cache[entry["id"]] = (entry["fingerprint"], entry["reason"])
                except (ValueError, KeyError, TypeError):
                    continue
    except OSError:
        pass
    return cache


def _record_hash(content: str, meta: dict[str, Any], source: str | None) -> str:
    """What a stored record stands for: its content fingerprint, its metadata (a change is
    stored) and its source (the same id from another source is a collision, not "unchanged")."""
    payload = json.dumps([content, meta, source], sort_keys=True, default=str).encode("ascii")
    return hashlib.blake2b(payload, digest_size=16).hexdigest()


def _record(entry: Entry, item: Item, source: str | None) -> dict[str, Any]:
    meta = {k: v for k, v in item.metadata.items() if k not in ("via", "kind")}
    modality = _source_modality(entry, item)
    text = item.text[:SNIPPET_CHARS] if item.text else None
    record = {"id": entry.id, "hash": entry.fingerprint, "modality": modality, "path": entry.path,
              "text": text, "via": item.metadata.get("via"), "meta": _jsonable(meta)}
    if source is not None:
        record["source"] = source
    return record


def _source_modality(entry: Entry, item: Item) -> str:
    """The modality of the item as it is in the corpus (a photo stays "image" under a text model)."""
    via = item.metadata.get("via", "")
    kept_text = "caption" in via or "text" in via or (item.image is not None and bool(item.text))
    return entry.kind.modality(kept_text=kept_text).value


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return json.loads(json.dumps(value, default=str))

