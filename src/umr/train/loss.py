"""The contrastive loss: InfoNCE over cosine similarity / temperature.

Every query scores every candidate of the (global) batch: the positives of all examples
(in-batch negatives) followed by all hard negatives. The target of query ``i`` is candidate
``i``, its own positive. Vectors are L2-normalised, so a dot product is the cosine.

False-negative guard (Qwen3-VL-Embedding's recipe): a negative that scores higher than the
query's positive by more than ``false_negative_margin`` is most likely an unlabelled positive;
it is masked out of that query's softmax instead of being pushed away.

Distributed: :func:`gather` concatenates every process's vectors, the local slice keeping
its gradient. Each process then computes the *whole* global loss, times the world size, so
that the data-parallel gradient average gives exactly the gradient of the global loss (the
other processes' slices are constants here, and their own processes supply those terms).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def info_nce(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None, *,
             temperature: float | torch.Tensor = 0.05,
             false_negative_margin: float | None = None) -> torch.Tensor:
    """Mean InfoNCE of ``queries[i]`` against ``positives[i]`` among all positives and negatives.

    ``queries`` and ``positives`` are ``(B, d)``, ``negatives`` ``(N, d)`` (any N, shared by all
    queries), all L2-normalised.
    """
    candidates = positives if negatives is None or len(negatives) == 0 else torch.cat([positives, negatives])
    scores = queries @ candidates.T
    target = torch.arange(len(queries), device=queries.device)
    if false_negative_margin is not None:
        own = scores[target, target].detach()
        suspicious = scores.detach() > own[:, None] + false_negative_margin
        suspicious[target, target] = False
        scores = scores.masked_fill(suspicious, float("-inf"))
    return F.cross_entropy(scores / temperature, target)


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather(local: torch.Tensor) -> torch.Tensor:
    """All processes' rows, in rank order; only the local rows carry gradients.

    Processes may hold different numbers of rows (e.g. hard negatives); rows are padded for
    the exchange and cut back.
    """
    rank, size = world()
    if size == 1:
        return local
    counts = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(size)]
    dist.all_gather(counts, torch.tensor([len(local)], device=local.device))
    counts = [int(c) for c in counts]
    width = max(counts)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded)
    parts = [p[:n] for p, n in zip(parts, counts)]
    parts[rank] = local
    return torch.cat(parts)


def distributed_info_nce(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None, *,
                         temperature: float | torch.Tensor, false_negative_margin: float | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backpropagate, global loss value)``: the local loss is the global one scaled
    by the world size (see the module docstring); on one process both are the same."""
    _, size = world()
    if size > 1 and isinstance(temperature, torch.Tensor):
        # every process computes the whole loss through the same temperature: keep its value,
        # divide its gradient so that the average over processes is the true one
        temperature = temperature.detach() + (temperature - temperature.detach()) / size
    if negatives is None:
        negatives = positives.new_zeros((0, positives.shape[-1]))
    loss = info_nce(gather(queries), gather(positives), gather(negatives), temperature=temperature,
                    false_negative_margin=false_negative_margin)
    return loss * size, loss.detach()


class Temperature(torch.nn.Module):
    """A fixed temperature, or a learned one (``log(1/τ)`` as a parameter, τ ≥ 0.01 as CLIP clamps)."""

    def __init__(self, value: float, *, learn: bool):
        super().__init__()
        if not value > 0:
            raise ValueError(f"temperature must be positive, got {value}")
        self.learn = learn
        self.log_inverse = torch.nn.Parameter(torch.tensor(math.log(1 / value)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return 1 / self.log_inverse.clamp(max=math.log(100)).exp()

    @property
    def value(self) -> float:
        return float(self().detach())
