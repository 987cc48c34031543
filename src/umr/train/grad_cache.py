"""One training step's backward pass, whole or GradCache-style (Gao et al., 2021).

The contrastive loss couples every item of a batch, so a large batch normally needs the
activations of all of it at once. GradCache splits the step in three: embed everything in
chunks *without* a graph; compute the loss on those vectors and take its gradient with
respect to the vectors; then re-run each chunk with a graph and backpropagate that cached
gradient through it. The parameter gradients equal the whole-batch ones (the forward is
deterministic: training runs with dropout off), and memory is that of one chunk. It works on
one device; when distributed, the loss is computed on the gathered vectors as usual.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

from ..models.base import Embedder
from ..types import Item

#: (queries, positives, negatives) -> (loss to backpropagate, loss value to report)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _embed(embedder: Embedder, items: list[Item], autocast) -> torch.Tensor:
    if not items:
        return torch.zeros(0, embedder.dim)
    with autocast():
        return embedder.training_forward(items).float()


def backward_step(embedder: Embedder, groups: tuple[list[Item], list[Item], list[Item]], loss_fn: LossFn, *,
                  chunk: int | None = None, scale: float = 1.0,
                  autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> float:
    """Backpropagate ``scale * loss`` of (queries, positives, negatives); returns the loss value.

    ``chunk=None`` embeds each group in one forward pass; ``chunk=N`` is GradCache with at most
    ``N`` items per forward pass.
    """
    if chunk is None:
        vectors = [_embed(embedder, items, autocast) for items in groups]
        loss, value = loss_fn(*vectors)
        (loss * scale).backward()
        return float(value.detach())
    if chunk < 1:
        raise ValueError(f"grad_cache_chunk must be at least 1, got {chunk}")
    with torch.no_grad():
        cached = [torch.cat([_embed(embedder, items[s: s + chunk], autocast)
                             for s in range(0, len(items), chunk)] or [torch.zeros(0, embedder.dim)])
                  for items in groups]
    cached = [v.detach().requires_grad_() for v in cached]
    loss, value = loss_fn(*cached)
    (loss * scale).backward()
    for items, vectors in zip(groups, cached):
        for s in range(0, len(items), chunk):
            part = _embed(embedder, items[s: s + chunk], autocast)
            # d(loss)/d(params) = sum over rows of d(loss)/d(row) . d(row)/d(params)
            (part * vectors.grad[s: s + chunk]).sum().backward()
    return float(value.detach())
