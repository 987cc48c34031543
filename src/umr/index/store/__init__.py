"""The embedded vector store: vectors and records persisted in one folder, crash-safe.

Layout of an index folder::

    manifest.json        the one source of truth, replaced atomically (:mod:`umr.core.atomic`)
    seg-000001.npy       float32 vectors of one commit, never modified once written
    seg-000001.jsonl     one record per vector row (id, hash, modality, path, text, meta)
    seg-000001.keys      the ids and content hashes of those rows (JSON), read fast on open
    del-000007.npy       int64 global row numbers deleted (updates delete the old row)
    hnsw-000007.faiss    optional HNSW graph over the first ``rows`` global rows (no vectors:
                         it searches the vectors of the segments)
    vectors-000001.f32   a quantised store's float32 rows (its segments then hold no .npy), and
    codes-000001.u8      its int8 codes or sign bits: both appended by each commit, the manifest
                         saying how many rows are valid (:mod:`umr.index.compact`)
    .lock                held (flock) by the one writer

A commit writes its new files, fsyncs them, then swaps the manifest. A process killed at any
moment leaves either the old or the new manifest, both pointing only at complete files; files a
dead commit left behind are not referenced and are removed by the next writer.

Memory: a reader keeps the snapshot its manifest named when it opened, and reads records from
the segment files on demand (no file stays open). A reader whose files a writer has compacted
away since loads the current snapshot and retries, so a search still sees whole commits only.
The vectors are held once, in FAISS's flat index, built on the first search; the HNSW graph
searches that same copy. A commit appends to it, so building N rows costs O(N). A quantised
store holds only the compact codes instead, and rescores from its memory-mapped float file.

Where each part lives: the data files in :mod:`.segments`, the manifest and the snapshot it names
in :mod:`.manifest`, the writer lock and the in-process read/write lock in :mod:`.locks`; the
in-memory vectors in :mod:`.vectors`, search (exact, filtered subsets, HNSW) in :mod:`.planning`
and the persisted graph in :mod:`.hnsw`; the records' fields and modality counts in
:mod:`.catalog`; compaction and garbage collection in :mod:`.maintenance`; and
:class:`FlatStore`, the facade over them, in :mod:`.flat`. Persistence never imports search.
"""

from ..base import FORMAT, MANIFEST, Filter, Hit, IndexLocked, IndexStoreError, read_manifest
from .flat import FlatStore

__all__ = ["FORMAT", "MANIFEST", "Filter", "FlatStore", "Hit", "IndexLocked", "IndexStoreError", "read_manifest"]
