"""The one in-memory copy of a store's vectors: FAISS's flat index over every row, which exact
search scans, the HNSW graph searches (it holds no vectors of its own) and compaction reads.

faiss is imported inside the functions (heavy, and an optional dependency): opening a store and
reading its records never loads it.
"""

from __future__ import annotations

import numpy as np

from .manifest import Snapshot


def build_flat(snapshot: Snapshot, dim: int):
    """A flat inner-product index holding every row of ``snapshot``."""
    import faiss

    index = faiss.IndexFlatIP(dim)
    # sized once and filled in place: adding segment by segment would grow the buffer
    # by doubling, with old and new buffers both resident at each step
    index.codes.resize(snapshot.rows * dim * 4)
    index.ntotal = snapshot.rows
    rows = matrix(index, dim)
    for seg in snapshot.segments:
        rows[seg.start:seg.start + seg.rows] = seg.vectors()
    return index


def matrix(flat, dim: int) -> np.ndarray:
    """The flat index's vectors as an array (a view: valid until the index next grows)."""
    import faiss

    if flat.ntotal == 0:
        return np.zeros((0, dim), np.float32)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * dim).reshape(flat.ntotal, dim)
