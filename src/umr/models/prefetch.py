"""Preparing the next batches' items (decode, resize, patches, tokens) while the model runs.

A family that splits :meth:`Prefetching.prepare` (one item, no model) from
:meth:`Prefetching.embed_prepared` (the forward pass) gets its items prepared in worker threads,
in the order the batches will ask for them and at most ``ahead`` batches beyond the one running:
PIL's decoding and resampling, NumPy's copies and the Rust tokenizer release the GIL, so they
overlap PyTorch's forward pass. What one item raises while it is prepared is that item's error,
raised when its batch asks for it, exactly as if it had been prepared inline.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Mapping, Sequence

import torch

from ..core.items import Item, ItemError


class Prefetching(ABC):
    """An embedder whose per-item preparation can run ahead of its forward pass."""

    #: worker threads preparing items ahead (0: prepare inline, batch by batch); None: see
    #: :func:`resolved_workers`
    prefetch_workers: int | None = None
    #: where the forward pass runs (decides whether a worker thread is free to prepare ahead)
    device: torch.device
    #: batches prepared ahead of the one running
    prefetch_ahead: int = 2

    @abstractmethod
    def prepare(self, item: Item) -> Any:
        """Everything one item needs before the model (no model work); raises for a bad item."""

    @abstractmethod
    def embed_prepared(self, prepared: list[Any]) -> torch.Tensor:
        """Raw vectors ``(len(prepared), dim)`` of prepared items (the forward pass); with
        gradients outside inference mode (fine-tuning trains through it)."""


def resolved_workers(workers: int | None, device: torch.device | str = "cpu") -> int:
    """:attr:`Prefetching.prefetch_workers` with None resolved for this machine: one worker when
    the forward pass runs on an accelerator (the CPU idles meanwhile: decoding videos and images
    there overlaps it) or the CPU has a core beyond PyTorch's threads; else 0 (on 2 cores fully
    used by PyTorch, a worker thread slowed GME's benchmark to 0.79x and video decoding gained
    nothing: it takes cycles from the forward pass)."""
    if workers is not None:
        return int(workers)
    if torch.device(device).type != "cpu":
        return 1
    return 1 if (os.cpu_count() or 1) > torch.get_num_threads() else 0


class PrefetchingLoader:
    """``prepare(items[i])`` for the positions of ``batches``, run in ``workers`` threads, at most
    ``ahead`` batches beyond the last one asked for."""

    def __init__(self, items: "Sequence[Item] | Mapping[int, Item]", batches: Sequence[Sequence[int]],
                 prepare: Callable[[Item], Any], *, workers: int, ahead: int):
        # ``items`` and ``batches`` are only indexed, batch by batch as they are submitted: they
        # may be lazy views (training's stream of micro-batches)
        self._items, self._batches, self._prepare = items, batches, prepare
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="umr-prefetch")
        self._futures: dict[int, Future] = {}
        self._batch_of: dict[int, int] = {}
        self._submitted = 0
        self._ahead = ahead

    def take(self, positions: list[int]) -> list[Any]:
        """The prepared items at ``positions`` (one batch, or what is left of it), in order; the
        first that failed raises its :class:`ItemError`, located at its index in ``positions``."""
        while positions[0] not in self._batch_of and self._submitted < len(self._batches):
            self._submit_through(self._submitted)  # a batch beyond those submitted: submit up to it
        self._submit_through(self._batch_of[positions[0]] + self._ahead)
        prepared = []
        for index, i in enumerate(positions):
            try:
                prepared.append(self._futures[i].result())
            except ItemError as exc:
                raise exc.at(index=index) from None
            except (MemoryError, torch.OutOfMemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - preparing one item: that item's error
                raise ItemError.from_exception(self._items[i].id, exc).at(index=index) from None
        return prepared

    def release(self, positions: list[int]) -> None:
        """Forget the prepared items of a finished batch (their arrays can be freed)."""
        for i in positions:
            self._futures.pop(i, None)
            self._batch_of.pop(i, None)

    def close(self) -> None:
        """Cancel what has not started and wait for what has."""
        for future in self._futures.values():
            future.cancel()
        self._pool.shutdown(wait=True)

    def _submit_through(self, last_batch: int) -> None:
        while self._submitted <= min(last_batch, len(self._batches) - 1):
            for i in self._batches[self._submitted]:
                self._batch_of[i] = self._submitted
                self._futures[i] = self._pool.submit(self._prepare, self._items[i])
            self._submitted += 1
