"""The persisted HNSW graph: a file holding the graph's links only, read back to search the
store's flat index (no second copy of the vectors), and extended with the rows added since it
was written. Searching it is :mod:`.planning`'s business; when to rebuild it is the store's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...core.atomic import atomic_path
from .segments import CHUNK_ROWS
from .vectors import matrix

#: rows added to the graph between progress reports
_ADD_ROWS = 50_000


def graph_name(number: int) -> str:
    return f"hnsw-{number:06d}.faiss"


def read_graph(path: Path):
    """An HNSW graph from its file, with no storage (it is given the store's flat index)."""
    import faiss

    graph = faiss.read_index(str(path))
    if graph.storage is not None:  # written by an older umr with its own copy of the vectors
        _take_storage(graph)
    graph.own_fields = False
    return graph


def grow_graph(folder: Path, info: dict[str, Any] | None, flat, dim: int, *, m: int, ef_construction: int,
               target: Path, progress: Callable[[int], Any] | None = None):
    """The graph ``info`` names (a copy: searches keep using the current one meanwhile), or a new
    one, extended to every row of ``flat`` and written to ``target`` without its vectors.

    While it adds rows the graph holds its own copy of the vectors it covers (FAISS adds to a
    graph's storage); the graph returned searches ``flat`` again.
    """
    import faiss

    rows = matrix(flat, dim)
    if info:
        graph = read_graph(folder / info["file"])
        start = info["rows"]
        work = faiss.IndexFlatIP(dim)
        for begin in range(0, start, CHUNK_ROWS):
            work.add(rows[begin:min(begin + CHUNK_ROWS, start)])
        graph.storage = work
    else:
        graph = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        work = _take_storage(graph)
        start = 0
    try:
        for begin in range(start, len(rows), _ADD_ROWS):
            graph.add(np.ascontiguousarray(rows[begin:begin + _ADD_ROWS]))
            if progress:
                progress(min(begin + _ADD_ROWS, len(rows)) - start)
        with atomic_path(target) as tmp:
            faiss.write_index(graph, str(tmp), faiss.IO_FLAG_SKIP_STORAGE)
    finally:
        graph.storage = flat
        del work
    return graph


def _take_storage(graph):
    """Detach the storage a graph owns and return it, owned by Python (freed with the object)."""
    storage = graph.storage
    graph.own_fields = False
    storage.this.own(True)
    return storage
