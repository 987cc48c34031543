"""What one training step reads: this process's micro-batches, their hard negatives drawn, their
items prepared ahead.

Examples are read and checked when a micro-batch draws them (:class:`~umr.train.data.TrainingData`:
start-up only counts them); their items are prepared (decoded, resized, tokenised) by the family's
prefetching loader ahead of the micro-batch that needs them, once: GradCache's second pass reuses
them. A bad example, found when drawn (its place goes to another) or when one of its items fails
to prepare (it is left out of that micro-batch), is reported once with its file, line and reason,
never drawn again, listed in ``errors.jsonl`` and kept in checkpoints, so a resumed run skips it too.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from ..core.items import Item, ItemError
from ..models.base import Embedder
from ..models.prefetch import Prefetching, PrefetchingLoader, resolved_workers
from .data import BatchPlan, Example, TrainingData, example_error, sample_negatives


@dataclass
class Position:
    """Where the data stream is: micro-batch ``index`` of ``epoch``."""

    epoch: int = 0
    index: int = 0


@dataclass
class MicroBatch:
    """This process's share of a global micro-batch: its examples (indices into the training
    data, and the examples drawn) and their items as one list, queries, then positives, then each
    example's hard negatives (tevatron's layout: one forward, split by :attr:`counts`).
    ``positions`` number the items for the prefetching loader."""

    examples: list[int]
    drawn: list[Example]
    negatives: list[list[Item]]
    items: list[Item]
    positions: list[int] = field(default_factory=list)

    @property
    def counts(self) -> tuple[int, int, int]:
        n = len(self.examples)
        return n, n, len(self.items) - 2 * n

    def example_of(self, k: int) -> int:
        """Which of :attr:`examples` item ``k`` belongs to."""
        n = len(self.examples)
        if k < 2 * n:
            return k % n
        k -= 2 * n
        for j, negatives in enumerate(self.negatives):
            if k < len(negatives):
                return j
            k -= len(negatives)
        raise IndexError(k)

    def without(self, j: int) -> MicroBatch:
        """The batch with example ``j`` (all its items) left out."""
        keep = [k for k in range(len(self.items)) if self.example_of(k) != j]
        return replace(self, examples=self.examples[:j] + self.examples[j + 1:],
                       drawn=self.drawn[:j] + self.drawn[j + 1:], negatives=self.negatives[:j] + self.negatives[j + 1:],
                       items=[self.items[k] for k in keep], positions=[self.positions[k] for k in keep])


class EpochStream:
    """This process's micro-batches of one epoch from micro-batch ``start`` on, made when first
    asked for: a lazy sequence of the micro-batches' item positions, with :attr:`items` by
    position, as :class:`~umr.models.prefetch.PrefetchingLoader` reads them (it asks a few
    micro-batches ahead of the one running)."""

    def __init__(self, make: Callable[[int], MicroBatch], *, start: int, stop: int):
        self._make, self.start, self.stop = make, start, stop
        self.items: dict[int, Item] = {}
        self._batches: dict[int, MicroBatch] = {}
        self._next_position = 0

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> list[int]:
        return self.micro_batch(self.start + k).positions

    def micro_batch(self, index: int) -> MicroBatch:
        """Micro-batch ``index`` of the epoch, its items numbered."""
        if index not in self._batches:
            batch = self._make(index)
            batch.positions = list(range(self._next_position, self._next_position + len(batch.items)))
            self._next_position += len(batch.items)
            self.items.update(zip(batch.positions, batch.items))
            self._batches[index] = batch
        return self._batches[index]

    def forget(self, index: int) -> None:
        for position in self._batches.pop(index).positions:
            self.items.pop(position, None)


@dataclass
class _Epoch:
    number: int
    stream: EpochStream
    loader: PrefetchingLoader | None


class MicroBatchFeed:
    """This process's micro-batches, epoch after epoch, from :attr:`position` on (a resumed run
    sets it): each drawn from the batch plan with ``hard_negatives`` per example, its items
    prepared by the family (ahead, when it prefetches)."""

    def __init__(self, data: TrainingData, plan: BatchPlan, embedder: Embedder, *, device: torch.device,
                 hard_negatives: int, seed: int, rank: int, world_size: int):
        self.data, self.plan, self.embedder, self.device = data, plan, embedder, device
        self.hard_negatives, self.seed, self.rank, self.world_size = hard_negatives, seed, rank, world_size
        self.micro_per_epoch = len(plan.epoch(0))
        self.position = Position()
        self._epoch: _Epoch | None = None

    def _micro_batch(self, plan: list[list[int]], epoch: int, index: int) -> MicroBatch:
        """This process's examples of global micro-batch ``index`` of ``epoch``, and their items."""
        drawn = self.data.draw(plan[index], rank=self.rank, world=self.world_size)
        chosen = [e for _, e in drawn]
        negatives = [sample_negatives(e, self.hard_negatives, seed=self.seed, epoch=epoch, index=i)
                     for i, e in drawn]
        items = [e.query for e in chosen] + [e.positive for e in chosen] + [n for group in negatives for n in group]
        return MicroBatch(examples=[i for i, _ in drawn], drawn=chosen, negatives=negatives, items=items)

    def _prepare(self, item: Item) -> Any:
        self.embedder.check(item)
        return self.embedder.prepare_training_item(item)

    def _open_epoch(self, epoch: int, start: int) -> _Epoch:
        self.close()
        plan = self.plan.epoch(epoch)
        stream = EpochStream(functools.partial(self._micro_batch, plan, epoch), start=start, stop=len(plan))
        workers = 0
        if isinstance(self.embedder, Prefetching):
            workers = resolved_workers(self.embedder.prefetch_workers, self.device)
        loader = (PrefetchingLoader(stream.items, stream, self._prepare, workers=workers,
                                    ahead=self.embedder.prefetch_ahead) if workers else None)
        return _Epoch(epoch, stream, loader)

    def next(self) -> tuple[MicroBatch, list[Any]]:
        """This process's next micro-batch and its prepared items (examples with an item that
        cannot be prepared left out and rejected; a micro-batch left empty is passed over)."""
        while True:
            if self.position.index >= self.micro_per_epoch:
                self.position = Position(self.position.epoch + 1, 0)
            if self._epoch is None or self._epoch.number != self.position.epoch:
                self._epoch = self._open_epoch(self.position.epoch, self.position.index)
            index = self.position.index
            self.position.index += 1
            batch = self._epoch.stream.micro_batch(index)
            batch, prepared = self._take(batch)
            if self._epoch.loader is not None:
                self._epoch.loader.release(self._epoch.stream.micro_batch(index).positions)
            self._epoch.stream.forget(index)
            if batch.examples:
                return batch, prepared

    def _take(self, batch: MicroBatch) -> tuple[MicroBatch, list[Any]]:
        loader = self._epoch.loader
        while batch.examples:
            try:
                return batch, (loader.take(batch.positions) if loader is not None
                               else Embedder._each_item(batch.items, self._prepare))
            except ItemError as exc:
                j = batch.example_of(exc.index or 0)
                self.data.reject(batch.examples[j], example_error(batch.drawn[j], exc))  # out of later draws too
                batch = batch.without(j)
        return batch, []

    def close(self) -> None:
        """Stop the current epoch's prefetching workers, if any."""
        if self._epoch is not None and self._epoch.loader is not None:
            self._epoch.loader.close()
