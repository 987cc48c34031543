"""One training step's backward pass: the whole batch at once, or GradCache (Gao et al., 2021).

The items of a micro-batch (queries, positives, negatives) are one list, embedded together and
split by counts for the loss (as tevatron does). The contrastive loss couples every item, so a
large batch normally needs the activations of all of it at once. GradCache splits the step in
three: embed the list in chunks *without* a graph; compute the loss on those vectors and take
its gradient with respect to the vectors; then re-run each chunk with a graph and
backpropagate that cached gradient through it. Without GradCache the list is one chunk whose
first pass keeps its graph, and the second pass is not needed.

The second pass must recompute the first exactly. The prepared inputs are reused (items are
decoded and tokenised once), and each chunk's random state (CPU and CUDA) is captured before
its first pass and restored for its second, so dropout draws the same masks in both (as
GradCache's ``RandContext``). The parameter gradients then equal those of one pass with a
graph over the same chunks; memory is that of one chunk.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

import torch

#: prepared items -> L2-normalised float32 vectors with gradients (the family's training forward)
Forward = Callable[[list[Any]], torch.Tensor]
#: this process's vectors (queries, positives, negatives one after another) -> (loss to
#: backpropagate, loss value to report)
LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class RandomState:
    """The CPU random state and that of ``device`` (CUDA), to replay a forward pass's randomness."""

    def __init__(self, device: torch.device):
        self.cuda = device if device.type == "cuda" else None
        self.cpu_state = torch.get_rng_state()
        self.cuda_state = torch.cuda.get_rng_state(self.cuda) if self.cuda is not None else None

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block with the captured states; the states from before come back after."""
        with torch.random.fork_rng(devices=[self.cuda] if self.cuda is not None else []):
            torch.set_rng_state(self.cpu_state)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda)
            yield


def backward_step(forward: Forward, prepared: Sequence[Any], loss_fn: LossFn, *, device: torch.device,
                  chunk: int | None = None, scale: float = 1.0,
                  before_last_backward: Callable[[], None] | None = None) -> torch.Tensor:
    """Backpropagate ``scale * loss`` of the ``prepared`` items; returns the loss value (a
    detached tensor: reading it is left to the caller, once per step).

    ``chunk=None`` embeds the list in one forward pass; ``chunk=N`` is GradCache with at most
    ``N`` items per forward pass. Vectors are moved to ``device``, the process's device, before
    the loss (a family may hand them back elsewhere). ``before_last_backward`` runs just before
    the last backward pass (the gradient reducer arms there).
    """
    last = before_last_backward or (lambda: None)
    no_autocast = torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") \
        else contextlib.nullcontext()
    if chunk is None:
        vectors = forward(list(prepared)).to(device)
        with no_autocast:  # the loss in float32, whatever the forward ran in
            loss, value = loss_fn(vectors.float())
        last()
        (loss * scale).backward()
        return value.detach()
    if chunk < 1:
        raise ValueError(f"grad_cache_chunk must be at least 1, got {chunk}")
    spans = [(s, min(s + chunk, len(prepared))) for s in range(0, len(prepared), chunk)]
    states, parts = [], []
    with torch.no_grad():
        for start, stop in spans:
            states.append(RandomState(device))
            parts.append(forward(list(prepared[start:stop])).to(device))
    cached = torch.cat(parts).float().requires_grad_()
    with no_autocast:
        loss, value = loss_fn(cached)
    (loss * scale).backward()
    for k, ((start, stop), state) in enumerate(zip(spans, states)):
        with state.replay():
            part = forward(list(prepared[start:stop])).to(device)
        if k == len(spans) - 1:
            last()
        # d(loss)/d(params) = sum over rows of d(loss)/d(row) . d(row)/d(params)
        part.float().backward(cached.grad[start:stop])
    return value.detach()
