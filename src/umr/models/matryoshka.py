"""Matryoshka dimensions: the first N dimensions of a vector, renormalised.

Models trained with Matryoshka representation learning (Qwen3-VL-Embedding) put the most
information in the leading dimensions, so a prefix is an embedding in its own right. One rule
for every place that cuts vectors after they were embedded (``umr eval --dims``, the server's
``dimensions``): keep the first N, divide by their norm. It equals ``load_model(..., dim=N)``,
which cuts the model's raw output before normalising, up to float rounding.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from .base import Embedder


def renormalised_prefix(vectors: np.ndarray, dim: int) -> np.ndarray:
    """The first ``dim`` columns of unit-norm ``vectors``, each row renormalised (the vectors
    themselves when ``dim`` is their width: they are unit already)."""
    if dim == vectors.shape[1]:
        return vectors
    cut = np.asarray(vectors[:, :dim], dtype=np.float32)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def sweep_dims(model: Embedder, dims: Iterable[int]) -> list[int]:
    """The dimensions a sweep over ``model`` scores, ascending, or ``ValueError`` saying why not.

    Each must be a whole number from 1 to the model's dimension, and the model's family must
    declare Matryoshka training (:attr:`~umr.models.base.Embedder.matryoshka`): a prefix of any
    other model's vectors is computable but means nothing, so sweeping it is refused.
    """
    dims = list(dims)
    if not dims:
        raise ValueError("a dimension sweep needs at least one dimension")
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, (int, np.integer))]
    if bad:
        raise ValueError(f"dimensions must be whole numbers, not {', '.join(map(repr, bad))}")
    check_matryoshka(model)
    name = model.name
    full = int(model.dim)
    out = [d for d in dims if not 1 <= d <= full]
    if out:
        raise ValueError(f"dimension(s) {', '.join(map(str, out))} out of range: model {name!r} gives "
                         f"{full}-dimensional vectors (sweep 1 to {full})")
    return sorted({int(d) for d in dims})


def check_matryoshka(model: Embedder) -> None:
    """``ValueError`` (one line) unless ``model``'s family declares Matryoshka training: the one
    rule for ``umr eval --dims``, the server's ``dimensions`` and Cohere's ``output_dimension``."""
    if not model.matryoshka:
        name = model.name
        raise ValueError(f"model {name!r} is not a Matryoshka model: the first N dimensions of its vectors "
                         f"are not an embedding (shorter vectors are for families trained for them, "
                         f"such as qwen3-vl-embedding-*)")


def matryoshka_prefix(model: Embedder, vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """``model``'s ``vectors`` cut to ``dim`` dimensions and renormalised, or ``ValueError`` (one
    line) for a size out of range or a model not trained for Matryoshka. ``None`` or the model's
    own width keeps the vectors as they are, for every model (a no-op, not a truncation)."""
    full = int(model.dim)
    if dim is None or dim == full:
        return vectors
    if not 1 <= dim <= full:
        raise ValueError(f"dimensions={dim} is out of range: model {model.name!r} gives "
                         f"{full}-dimensional vectors")
    check_matryoshka(model)
    return renormalised_prefix(vectors, dim)
