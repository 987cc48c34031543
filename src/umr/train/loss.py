"""The contrastive loss: InfoNCE over cosine similarity / temperature.

Every query scores every candidate of the (global) batch: the positives of all examples
(in-batch negatives) followed by all hard negatives. The target of query ``i`` is candidate
``i``, its own positive. Vectors are L2-normalised, so a dot product is the cosine.

Masked candidates get the most negative finite logit *after* the division by the temperature,
so a learned temperature's gradient never meets ``inf * 0`` (NaN). Two guards mask:

* the false-negative guard (Qwen3-VL-Embedding's recipe): a negative that scores higher than
  the query's positive by more than ``false_negative_margin`` is most likely an unlabelled
  positive; it is masked out of that query's softmax instead of being pushed away;
* the same example drawn twice into one batch (a source weighted above 1): its other copy's
  positive is the query's own positive, not a negative.

Distributed: :func:`gather_groups` concatenates every process's vectors, the local rows keeping
their gradient. Each process then computes the *whole* global loss, times the world size, so
that the data-parallel gradient average gives exactly the gradient of the global loss (the
other processes' rows are constants here, and their own processes supply those terms).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .collectives import all_gather, all_gather_object, world


def info_nce(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None, *,
             temperature: float | torch.Tensor = 0.05, false_negative_margin: float | None = None,
             examples: Sequence[int] | None = None) -> torch.Tensor:
    """Mean InfoNCE of ``queries[i]`` against ``positives[i]`` among all positives and negatives.

    ``queries`` and ``positives`` are ``(B, d)``, ``negatives`` ``(N, d)`` (any N, shared by all
    queries), all L2-normalised. ``examples[i]``: the example query ``i`` comes from (the
    positives of its other copies in the batch are masked).
    """
    candidates = positives if negatives is None or len(negatives) == 0 else torch.cat([positives, negatives])
    scores = queries @ candidates.T
    batch = len(queries)
    target = torch.arange(batch, device=queries.device)
    masked = torch.zeros_like(scores, dtype=torch.bool)
    if false_negative_margin is not None:
        own = scores[target, target].detach()
        masked |= scores.detach() > own[:, None] + false_negative_margin
    if examples is not None:
        ids = torch.as_tensor(list(examples), device=queries.device)
        masked[:, :batch] |= ids[:, None] == ids[None, :]
    masked[target, target] = False
    logits = scores / temperature
    return F.cross_entropy(logits.masked_fill(masked, torch.finfo(logits.dtype).min), target)


def gather_groups(local: torch.Tensor, counts: Sequence[int], examples: Sequence[int]
                  ) -> tuple[list[torch.Tensor], list[int]]:
    """Every process's rows of each group, and every process's query examples.

    ``local`` holds this process's groups one after another (``counts[g]`` rows each: queries,
    positives, negatives); group ``g`` of the result is every process's group ``g``, in rank
    order. Only this process's rows carry gradients. Processes may hold different numbers of
    rows: rows are padded for the exchange and cut back.
    """
    rank, size = world()
    if size == 1:
        return list(local.split(list(counts))), list(examples)
    shared = all_gather_object((list(counts), list(examples)))
    width = max(sum(c) for c, _ in shared)
    padded = local.new_zeros((width, *local.shape[1:]))
    padded[: len(local)] = local.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    all_gather(parts, padded)
    rows = [part[: sum(c)] for part, (c, _) in zip(parts, shared)]
    rows[rank] = local
    split = [r.split(c) for r, (c, _) in zip(rows, shared)]
    groups = [torch.cat([s[g] for s in split]) for g in range(len(counts))]
    return groups, [e for _, ids in shared for e in ids]


def distributed_info_nce(vectors: torch.Tensor, counts: Sequence[int], *, examples: Sequence[int],
                         temperature: float | torch.Tensor, false_negative_margin: float | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss to backpropagate, global loss value)`` of this process's ``vectors`` (queries,
    positives, negatives one after another, ``counts`` of each; ``examples``: each query's
    example). The local loss is the global one scaled by the world size (see the module
    docstring); on one process both are the same."""
    _, size = world()
    if size > 1 and isinstance(temperature, torch.Tensor):
        # every process computes the whole loss through the same temperature: keep its value,
        # divide its gradient so that the average over processes is the true one
        temperature = temperature.detach() + (temperature - temperature.detach()) / size
    groups, every_example = gather_groups(vectors, counts, examples)
    loss = info_nce(*groups, temperature=temperature, false_negative_margin=false_negative_margin,
                    examples=every_example)
    return loss * size, loss.detach()


class Temperature(torch.nn.Module):
    """A fixed temperature, or a learned one: ``log(1/τ)`` as a parameter, τ kept at or above
    ``minimum`` (0.01 by default: CLIP's bound on its logit scale, 100).

    A fixed τ is used as given. A learned one starts at ``value`` (which must respect the bound)
    and is put back on the bound after each optimizer step that crosses it
    (:meth:`keep_in_bounds`), which the trainer reports.
    """

    def __init__(self, value: float, *, learn: bool, minimum: float = 0.01):
        super().__init__()
        if not value > 0:
            raise ValueError(f"temperature must be positive, got {value}")
        if learn and not 0 < minimum <= value:
            raise ValueError(f"a learned temperature starts at or above its lower bound (min_temperature "
                             f"{minimum}), not at {value}")
        self.learn = learn
        self.minimum = minimum
        self.log_inverse = torch.nn.Parameter(torch.tensor(math.log(1 / value)), requires_grad=learn)

    def forward(self) -> torch.Tensor:
        return torch.exp(-self.log_inverse)

    def keep_in_bounds(self) -> bool:
        """Put a learned τ that went below its bound back on it; True when it had to."""
        limit = math.log(1 / self.minimum)
        with torch.no_grad():
            beyond = bool(self.log_inverse > limit)
            if beyond:
                self.log_inverse.fill_(limit)
        return beyond

    @property
    def value(self) -> float:
        return float(self().detach())
