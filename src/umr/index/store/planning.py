"""How a search is answered: a brute force over every row (FAISS's flat index), over a small
copy of the few rows a filter lets through, or a walk of the HNSW graph (with the rows added since
it was built searched exactly, and a filtered walk that would run dry answered exactly instead).
A quantised store searches its compact codes the same two ways, then rescores the candidates
against the float rows on disk (:class:`~umr.index.compact.CompactVectors`).

:class:`Searcher` holds what searching a snapshot keeps in memory (the flat index, the graph,
filter masks and subset copies); it returns scores and global row numbers, and the store turns
those into records. Nothing here writes a file.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..base import Filter
from ..compact import CompactVectors, Written, rescore_depth
from ..quantized import bitmap_selector
from .catalog import fields_of
from .hnsw import read_graph
from .manifest import Snapshot
from .vectors import build_flat, matrix

#: filter masks kept (one byte per row each)
MASK_CACHE = 8
#: a filter letting through at most this share of rows is searched by brute force over copies
#: of just those vectors, kept while all such copies stay under SUBSET_BUDGET of the matrix
SUBSET_SHARE = 0.05
SUBSET_BUDGET = 0.1
#: a filtered HNSW walk passing fewer than this share of rows is replaced by a brute force
_HNSW_FILTER_MIN_SHARE = 0.2


class Searcher:
    """The in-memory side of searching a store: built on first use, grown by commits, dropped
    when the store maps a new snapshot.

    ``fields_seen`` is told the metadata fields of every live record whenever building a filter's
    mask reads them all anyway (the store keeps them for :meth:`FlatStore.metadata_fields`).
    """

    def __init__(self, folder: Path, dim: int, fields_seen: Callable[[set[str]], None]):
        self.folder, self.dim = folder, dim
        self._fields_seen = fields_seen
        self._lock = threading.Lock()
        self._flat = None
        self._compact: CompactVectors | None = None
        self._hnsw: tuple[str, Any] | None = None  # (file, graph)
        self._masks: OrderedDict[Filter | None, np.ndarray] = OrderedDict()
        self._subsets: OrderedDict[Filter | None, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    # what is kept ----------------------------------------------------------------------------

    def forget(self) -> None:
        """Drop everything: the store now maps another snapshot."""
        self._flat = None
        self._compact = None
        self._hnsw = None
        self.forget_filters()

    def forget_filters(self) -> None:
        """Drop masks and subsets: the rows that pass have changed."""
        with self._lock:
            self._masks.clear()
            self._subsets.clear()

    def append(self, vectors: np.ndarray, written: Written | None) -> None:
        """Rows a commit added (a flat index not built yet will read them from the segments), and
        what it ``written`` to a quantised store's compact files."""
        if written is not None:
            if self._compact is not None:
                self._compact.take(written)
        elif self._flat is not None:
            self._flat.add(vectors)

    def compact(self, snapshot: Snapshot) -> CompactVectors:
        """A quantised store's compact vectors (its codes are read on first search)."""
        with self._lock:
            if self._compact is None:
                self._compact = CompactVectors(self.folder, self.dim, snapshot.manifest["compact"], snapshot.rows)
            return self._compact

    def keep_graph(self, file: str, graph) -> None:
        self._hnsw = (file, graph)

    def flat_index(self, snapshot: Snapshot):
        """FAISS's flat index over every row: the one in-memory copy of the vectors."""
        with self._lock:
            if self._flat is None:
                self._flat = build_flat(snapshot, self.dim)
            return self._flat

    def graph(self, info: dict[str, Any], snapshot: Snapshot):
        """The HNSW graph ``info`` names, searching the flat index's vectors."""
        with self._lock:
            if self._hnsw is not None and self._hnsw[0] == info["file"]:
                return self._hnsw[1]
        flat = self.flat_index(snapshot)
        graph = read_graph(self.folder / info["file"])
        graph.storage = flat
        with self._lock:
            self._hnsw = (info["file"], graph)
        return graph

    # searching -------------------------------------------------------------------------------

    def search(self, snapshot: Snapshot, queries: np.ndarray, k: int, filter: Filter | None,
               method: str, ef_search: int, rescore_k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and global rows (``-1`` where fewer pass) of the top ``k`` per query
        (``rescore_k``: a quantised store's candidates rescored, see :meth:`CompactVectors.search`)."""
        mask = self._mask(snapshot, filter)
        info = snapshot.manifest.get("hnsw")
        if snapshot.manifest.get("compact") is not None:
            return self._search_compact(snapshot, queries, k, mask, method == "hnsw" and info, ef_search, rescore_k)
        graph = None
        if method == "hnsw" and info:
            try:
                graph = self.graph(info, snapshot)
            except FileNotFoundError:  # a writer replaced the graph since this snapshot: search exactly
                graph = None
        if graph is not None:
            return self._search_hnsw(snapshot, graph, info["rows"], queries, k, mask, ef_search, filter)
        return self._search_flat(snapshot, queries, k, mask, filter)

    def _mask(self, snapshot: Snapshot, filter: Filter | None) -> np.ndarray | None:
        """Bool mask of rows a search may return, or None for "every row"."""
        if filter is None and not len(snapshot.deleted_rows):
            return None
        with self._lock:
            cached = self._masks.get(filter)
            if cached is not None:
                self._masks.move_to_end(filter)
                return cached
        mask = ~snapshot.deleted.view()
        if filter is not None:
            fields: set[str] = set()
            for row, line in snapshot.live_lines():
                record = json.loads(line)
                fields.update(fields_of(record))
                if not filter.accepts(record):
                    mask[row] = False
            self._fields_seen(fields)
        with self._lock:
            self._masks[filter] = mask
            while len(self._masks) > MASK_CACHE:
                self._masks.popitem(last=False)
        return mask

    def _search_flat(self, snapshot, queries, k, mask, filter):
        import faiss

        index = self.flat_index(snapshot)
        if mask is None:
            return index.search(queries, min(k, index.ntotal))
        n_ok = int(mask.sum())
        if n_ok == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        kk = min(k, n_ok)
        if n_ok <= SUBSET_SHARE * len(mask):
            # few rows pass: a small brute force over just them beats scanning everything
            rows, subset = self._subset(index, mask, filter)
            scores, local = faiss.knn(queries, subset, kk, metric=faiss.METRIC_INNER_PRODUCT)
            return scores, np.where(local >= 0, rows[np.maximum(local, 0)], -1)
        params = faiss.SearchParameters(sel=bitmap_selector(mask))
        return index.search(queries, kk, params=params)

    def _subset(self, index, mask, filter):
        """The rows a filter lets through and their vectors, kept while such copies stay small."""
        with self._lock:
            hit = self._subsets.get(filter)
            if hit is not None:
                self._subsets.move_to_end(filter)
                return hit
        rows = np.flatnonzero(mask)
        entry = (rows, np.ascontiguousarray(matrix(index, self.dim)[rows]))
        budget = SUBSET_BUDGET * index.ntotal * self.dim * 4
        with self._lock:
            self._subsets[filter] = entry
            while sum(v.nbytes for _, v in self._subsets.values()) > budget and len(self._subsets) > 1:
                self._subsets.popitem(last=False)
        return entry

    def _search_compact(self, snapshot, queries, k, mask, info, ef_search, rescore_k):
        """The compact codes' candidates, by the HNSW graph over them unless a filtered walk would
        run dry (or came back short: those queries are searched exactly), rescored."""
        compact = self.compact(snapshot)
        with self._lock:  # one thread reads the codes in
            compact.first_stage_index()
        n_ok = snapshot.live if mask is None else int(mask.sum())
        depth = max(rescore_depth(k, rescore_k), k)
        graph = None
        if info and not (mask is not None and _filtered_walk_runs_dry(n_ok, len(mask), depth,
                                                                       max(int(ef_search), depth))):
            with self._lock:
                graph = compact.graph(info["file"], info["rows"])
        scores, rows = compact.search(queries, k, rescore_k=rescore_k, mask=mask, graph=graph, ef_search=ef_search)
        if graph is not None:
            short = np.flatnonzero((rows >= 0).sum(axis=1) < min(k, n_ok))
            if len(short):
                scores[short], rows[short] = compact.search(queries[short], k, rescore_k=rescore_k, mask=mask)
        return scores, rows

    def _search_hnsw(self, snapshot, graph, covered, queries, k, mask, ef_search, filter):
        import faiss

        ef = max(int(ef_search), k)
        n_rows = snapshot.rows
        n_ok = snapshot.live if mask is None else int(mask.sum())
        if mask is not None and _filtered_walk_runs_dry(n_ok, len(mask), k, ef):
            return self._search_flat(snapshot, queries, k, mask, filter)
        params = faiss.SearchParametersHNSW(efSearch=ef)
        if mask is not None:
            params.sel = bitmap_selector(mask[:covered])
        scores, rows = graph.search(queries, min(k, covered), params=params)
        if covered < n_rows:  # rows added since the graph was built: search them exactly
            tail = matrix(self.flat_index(snapshot), self.dim)[covered:]
            tail_rows = np.arange(covered, n_rows)
            if mask is not None:
                keep = mask[covered:]
                tail, tail_rows = tail[keep], tail_rows[keep]
            if len(tail_rows):
                ts, tl = faiss.knn(queries, np.ascontiguousarray(tail), min(k, len(tail_rows)),
                                   metric=faiss.METRIC_INNER_PRODUCT)
                tr = np.where(tl >= 0, tail_rows[np.maximum(tl, 0)], -1)
                scores = np.concatenate([scores, ts], axis=1)
                rows = np.concatenate([rows, tr], axis=1)
                order = np.argsort(-np.where(rows >= 0, scores, -np.inf), axis=1, kind="stable")[:, :k]
                scores = np.take_along_axis(scores, order, 1)
                rows = np.take_along_axis(rows, order, 1)
        if mask is not None:
            # The graph walk can still run dry (or meet deleted rows only); a query that came back
            # with fewer than the k rows that pass is answered exactly instead.
            short = np.flatnonzero((rows >= 0).sum(axis=1) < min(k, n_ok))
            if len(short):
                es, er = self._search_flat(snapshot, np.ascontiguousarray(queries[short]), k, mask, filter)
                scores, rows = list(scores), list(rows)
                for j, q in enumerate(short):
                    scores[q], rows[q] = es[j], er[j]
        return scores, rows


def _filtered_walk_runs_dry(n_ok: int, n_rows: int, k: int, ef: int) -> bool:
    """Whether a filtered HNSW search should brute-force the rows that pass instead.

    With a selector FAISS still walks every node but keeps only those that pass, so it meets
    about ``share * (nodes visited, a small multiple of ef)`` passing rows: once ``share * ef``
    drops below ``k`` it returns fewer than ``k`` results, and the wrong ones. Brute force then:
    whenever at most ``k * ef`` rows pass (as cheap as the walk itself), or the share passing is
    below ``k / ef`` (capped at 20%, so a loose filter keeps the graph's speed).
    """
    if n_ok <= k * ef:
        return True
    return n_ok < n_rows * min(_HNSW_FILTER_MIN_SHARE, k / ef)


