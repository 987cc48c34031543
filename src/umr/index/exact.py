"""Exact maximum-inner-product top-k: the one brute-force search the index and the evaluator share."""

from __future__ import annotations

import numpy as np


def search_exact(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``vectors`` by inner product for every query, best first.

    Returns ``(scores, rows)`` of shape ``(n_queries, min(k, n_vectors))``. FAISS's brute-force
    kernel does the work (BLAS, multi-threaded) on ``vectors`` where they are — a float32
    C-contiguous array, e.g. a memory-mapped cache shard, is not copied into an index — and
    returns exactly what a FAISS flat index over them returns, equal ties included.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(int(k), len(vectors))
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    return faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
