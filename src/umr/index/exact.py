"""Exact maximum-inner-product top-k: the one brute-force search the index and the evaluator share."""

from __future__ import annotations

import numpy as np


def search_exact(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows of ``vectors`` by inner product for every query, best first.

    Returns ``(scores, rows)`` of shape ``(n_queries, min(k, n_vectors))``; ties keep the lower row
    first. FAISS's flat index does the work (BLAS, multi-threaded), so results equal a numpy
    ``argsort`` of ``queries @ vectors.T``.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(int(k), len(vectors))
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    scores, rows = index.search(queries, k)
    return scores, rows
