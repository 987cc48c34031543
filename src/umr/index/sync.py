"""Keeping an index in step with its sources: items added directly (:meth:`Index.add`) and
corpora indexed and re-indexed (:meth:`Index.index_corpus`), with their ids, errors, skips and
pruning; the per-entry work is :mod:`umr.index.run`.

Item ids: a folder's items are ``<prefix>/<path in the folder>``, the prefix being the folder's
name unless ``id_prefix`` says otherwise (``""``: no prefix); a JSONL or M-BEIR pool's explicit
ids are used as they are (``<prefix>/<id>`` with ``id_prefix``), its lines without an id are
``<file name>/line-N`` (``<folder>/<file name>/line-N`` when another source has that file name).
An id already indexed from another source is a reported collision, never a silent replacement;
``prune`` only deletes items of the source being indexed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Protocol
from collections.abc import Callable, Sequence

from ..core.atomic import write_text_atomic
from ..core.entries import Entry, EntryKind, ReadReport
from ..core.fingerprint import FileDigests, item_fingerprint
from ..core.items import Item, ItemError
from ..core.results import Summary
from ..data.chunking import Chunker, stale_passages
from ..data.corpus import default_id_prefix, read_corpus
from ..data.video_segments import item_video_entries, stale_segments, video_segmenter
from .base import IndexStoreError, VectorStore, json_line
from .embedding import ChunkEmbedder
from .multivector.store import BACKEND  # issue 24
from .run import RunTarget, read_skip_cache, run_entries

ERRORS_FILE = "errors.jsonl"
#: items found to have no representation under the model, by fingerprint: re-runs skip their OCR
SKIPPED_FILE = "skipped.jsonl"


class SourceConflict(IndexStoreError):
    """A source's ids would clash with another source's, or it was indexed under another prefix."""


class SyncTarget(RunTarget, Protocol):
    """What a sync writes into (:class:`umr.index.Index`): a run's target with its folder and its
    memory of file digests."""

    folder: Path

    @property
    def digests(self) -> FileDigests: ...


def add_items(target: SyncTarget, items: Sequence[Item], *, batch_size: int | None = None) -> Summary:
    """:meth:`umr.index.Index.add`. A video item is cut into time segments as the index cuts
    video files (:func:`~umr.data.video_segments.item_video_entries`)."""
    entries = []
    videos = None
    for item in items:
        if item.id is None:
            raise ValueError("items added to an index need ids")
        problem = item.problem
        if problem is not None:
            entries.append(ItemError(str(item.id), problem))
        elif item.video is not None:
            if videos is None:
                videos = video_segmenter(target.model, target.store.config.get("video_segments"))
            entries.extend(item_video_entries(item, str(item.id), videos, digests=target.digests))
        else:
            entries.append(_direct_entry(item, target.digests))
    summary = Summary()
    run_entries(target, entries, summary, batch_size=batch_size, commit_every=10**9)
    target.digests.save()
    update_graph(target.store)
    return summary


def update_graph(store: VectorStore) -> None:
    """HNSW indexes: let the store keep its graph current (FAISS extends it in large steps)."""
    if store.config.get("method") != "hnsw":
        return
    store.update_graph(m=int(store.config.get("hnsw_m", 32)),
                       ef_construction=int(store.config.get("ef_construction", 100)))


def id_prefix_for(store: VectorStore, source: str | os.PathLike, id_prefix: str | None = None) -> str:
    """:meth:`umr.index.Index.id_prefix_for`."""
    key = str(Path(source).resolve())
    given = None if id_prefix is None else id_prefix.strip("/")
    sources = store.config.get("sources") or {}
    if key in sources:
        recorded = sources[key]
        if given is not None and given != recorded:
            raise SourceConflict(
                f"{source} was indexed with --id-prefix {recorded!r}; its ids would all change. "
                f"Drop --id-prefix (or use {recorded!r}), or delete its items first")
        return recorded
    if given is not None:
        prefix = given
    elif any(r.get("source") == key for r in store.records()):
        prefix = ""  # indexed before umr prefixed ids: keep its ids as they are
    else:
        prefix = default_id_prefix(source)
    for other, used in sources.items():
        if prefix and used == prefix and other != key:
            raise SourceConflict(f"ids of {other} already start with {prefix + '/'!r}; give {source} "
                                 f"its own prefix with --id-prefix NAME")
    return prefix


def index_corpus(target: SyncTarget, source, *, image_root=None, commit_every: int = 256,
                 commit_seconds: float = 30.0, batch_size: int | None = None, prune: bool = False,
                 progress: Callable[[int], None] | None = None,
                 errors_file: str | os.PathLike | None = None, id_prefix: str | None = None,
                 chunk: bool | None = None, chunk_tokens: int | None = None,
                 chunk_overlap: int | None = None, embedder: ChunkEmbedder | None = None,
                 segment_seconds: float | None = None, segment_overlap: float | None = None) -> Summary:
    """:meth:`umr.index.Index.index_corpus`."""
    store = target.store
    started = time.monotonic()
    summary = Summary(read=ReadReport())
    chunk = False if store.backend == BACKEND else chunk  # issue 24: a late-interaction index keeps pages whole
    chunker = _chunker(target, chunk=chunk, tokens=chunk_tokens, overlap=chunk_overlap)
    # video files: segments cut as given, else as recorded (umr.data.video_segments)
    videos = video_segmenter(target.model, store.config.get("video_segments"), seconds=segment_seconds,
                             overlap=segment_overlap)
    if videos.settings() != store.config.get("video_segments", videos.DEFAULTS):
        store.set_config({**store.config, "video_segments": videos.settings()})
    source_key = str(Path(source).resolve())
    prefix = id_prefix_for(store, source, id_prefix)
    sources = dict(store.config.get("sources") or {})
    if sources.get(source_key) != prefix:
        store.set_config({**store.config, "sources": {**sources, source_key: prefix}})
    errors_path = Path(errors_file) if errors_file else target.folder / ERRORS_FILE
    errors_path.parent.mkdir(parents=True, exist_ok=True)
    skipped_path = target.folder / SKIPPED_FILE
    skip_cache = read_skip_cache(skipped_path)
    line_ids = dict(store.config.get("line_ids") or {})
    if source_key not in line_ids:  # decided once per source, so its ids never change
        line_ids[source_key] = _line_id_base(source_key, line_ids)
        store.set_config({**store.config, "line_ids": line_ids})
    entries = (_prefixed(entry, prefix, line_ids[source_key])
               for entry in read_corpus(source, image_root=image_root, digests=target.digests,
                                        chunker=chunker, report=summary.read, videos=videos))
    with open(errors_path, "w", encoding="utf-8") as err_handle, \
            open(skipped_path, "a", encoding="utf-8") as skip_handle:
        seen = run_entries(target, entries, summary, batch_size=batch_size,
                           commit_every=commit_every, commit_seconds=commit_seconds,
                           progress=progress, err_handle=err_handle, source=source_key,
                           skip_cache=skip_cache, skip_handle=skip_handle, embedder=embedder)
        # the reader names what it passed over within the source; the index says it with ids
        summary.read.ignored = [(f"{prefix}/{name}" if prefix else name, kind, reason)
                                for name, kind, reason in summary.read.ignored]
        summary.read.truncated = [f"{prefix}/{name}" if prefix else name for name in summary.read.truncated]
        for name, _, reason in summary.read.ignored:
            err_handle.write(json_line({"id": name, "path": None, "line": None, "kind": "ignored",
                                         "error": reason}) + "\n")
    target.digests.save()
    # keep only this run's entries (other sources' entries stay too)
    current = {e["id"] for e in summary.skipped}
    keep = [{"id": i, "fingerprint": fp, "reason": why} for i, (fp, why) in skip_cache.items()
            if i in current or i not in seen]
    write_text_atomic(skipped_path, "".join(json_line(e) + "\n" for e in keep))
    if prune:
        stale = [r["id"] for r in store.records()
                 if r.get("source") == source_key and r["id"] not in seen]
        summary.deleted += store.delete(stale)
    else:  # a text split (or a video cut) differently than before: its old passages (or whole item) go
        candidates = stale_passages(store.ids(), seen) + stale_segments(store.ids(), seen)
        stale = [r["id"] for r in store.get(candidates) if r is not None and r.get("source") == source_key]
        summary.deleted += store.delete(stale)
    update_graph(store)
    summary.seconds = time.monotonic() - started
    return summary


def _chunker(target: SyncTarget, *, chunk: bool | None = None, tokens: int | None = None,
             overlap: int | None = None) -> Chunker:
    """How this index splits long texts: the settings given, else those recorded by the last
    run (default: on, passages of the model's window, overlap 1/8); a size turns splitting on.
    New settings are recorded."""
    recorded = target.store.config.get("chunking") or {}
    if chunk is None:  # a size given turns splitting on
        chunk = tokens is not None or overlap is not None or recorded.get("enabled", True)
    if tokens is None:
        tokens = recorded.get("tokens")
        if overlap is None:
            overlap = recorded.get("overlap")
    chunker = Chunker(target.model, tokens=tokens, overlap=overlap, enabled=bool(chunk))
    if chunker.settings() != recorded:
        target.store.set_config({**target.store.config, "chunking": chunker.settings()})
    return chunker


def _direct_entry(item: Item, digests: FileDigests) -> Entry:
    """An item given to :meth:`Index.add` as a corpus entry (its kind is its modality)."""
    image = item.image
    if isinstance(image, (str, os.PathLike)):  # stored resolved: results open from anywhere
        image = str(Path(image).expanduser().resolve())
    candidate = Item(text=item.text, image=image, id=str(item.id), metadata=dict(item.metadata))

    def load() -> Item:
        return Item(text=candidate.text, image=candidate.image, id=candidate.id, metadata=dict(candidate.metadata))

    return Entry(str(item.id), item_fingerprint(candidate, digests=digests), load,
                 image if isinstance(image, str) else None, EntryKind(candidate.modality.value), dict(item.metadata))


def _line_id_base(source_key: str, taken: dict[str, str]) -> str:
    """What ids of a JSONL's lines without an id start with: the file's name, or its folder and
    name when another source already uses that (two folders' ``items.jsonl``), else its path."""
    path = Path(source_key)
    for base in (path.name, f"{path.parent.name}/{path.name}", path.as_posix().lstrip("/")):
        if base not in taken.values():
            return base
    return path.as_posix()


def _prefixed(entry, prefix: str, source_name: str):
    """The entry under this source's ids: ``prefix/id``; ids a JSONL line did not give are
    ``<file name>/line-N`` without a prefix."""
    if isinstance(entry, ItemError):
        if entry.item_id is not None and prefix:
            return ItemError(f"{prefix}/{entry.item_id}", entry.reason, line=entry.line)
        return entry
    if prefix:
        entry.id = f"{prefix}/{entry.id}"
    elif not entry.explicit_id:
        entry.id = f"{source_name}/{entry.id}"
    return entry
