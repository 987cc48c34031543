"""Micro-batching: concurrent requests share one forward pass, and the model never runs on the event loop.

Requests that queue up while the model is busy are embedded together (up to a cost budget); a
request that finds the model idle waits a short window for others. The model runs in one
worker thread that owns it, so a slow batch never blocks health checks or other I/O, and
32 one-sentence requests cost about one 32-sentence forward pass instead of 32.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..models.base import EmbedResult, Embedder
from ..types import Item

T = TypeVar("T")


def item_cost(item: Item) -> int:
    """A rough forward cost: one per item, more for long texts and images (a budget, not a count)."""
    return 1 + len(item.text or "") // 512 + (8 if item.image is not None else 0)


@dataclass
class _Job:
    items: list[Item]
    cost: int
    future: asyncio.Future


class MicroBatcher:
    """Embeds items for many concurrent callers; ``enabled=False`` runs one request at a time."""

    def __init__(self, model: Embedder, *, window_ms: float = 5.0, cost_budget: int = 64, enabled: bool = True):
        self.model = model
        self.window = window_ms / 1000.0
        self.cost_budget = cost_budget
        self.enabled = enabled
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="umr-model")
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn(*args)`` in the model's thread (anything else that uses the model, e.g. an index add)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def embed(self, items: list[Item]) -> EmbedResult:
        """The items' vectors, or their errors (``on_error="skip"``), as ``model.embed`` gives them."""
        if not self.enabled:
            return await self.run(self._embed, items)
        if self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(items, sum(item_cost(i) for i in items), future))
        return await future

    def _embed(self, items: list[Item]) -> EmbedResult:
        return self.model.embed(items, show_progress_bar=False, on_error="skip")

    async def _serve(self) -> None:
        while True:
            jobs = [await self._queue.get()]
            cost = self._drain(jobs, jobs[0].cost)
            if len(jobs) == 1 and self.window > 0:  # alone: wait a moment for company
                await asyncio.sleep(self.window)
                self._drain(jobs, cost)
            await self._run_jobs(jobs)

    def _drain(self, jobs: list[_Job], cost: int) -> int:
        """Add what is queued to ``jobs`` (under load: what arrived while the model was busy), within the budget."""
        while cost < self.cost_budget and not self._queue.empty():
            job = self._queue.get_nowait()
            jobs.append(job)
            cost += job.cost
        return cost

    async def _run_jobs(self, jobs: list[_Job]) -> None:
        items = [item for job in jobs for item in job.items]
        try:
            result = await self.run(self._embed, items)
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, part in zip(jobs, split_result(result, [len(job.items) for job in jobs])):
            if not job.future.done():
                job.future.set_result(part)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def split_result(result: EmbedResult, sizes: list[int]) -> list[EmbedResult]:
    """One :class:`EmbedResult` per caller, positions and errors relative to its own items."""
    import numpy as np

    out, start = [], 0
    for size in sizes:
        stop = start + size
        mask = (result.indices >= start) & (result.indices < stop)
        errors = [err.at(index=err.index - start) for err in result.errors
                  if err.index is not None and start <= err.index < stop]
        out.append(EmbedResult(vectors=result.vectors[mask], indices=np.asarray(result.indices[mask]) - start,
                               errors=errors))
        start = stop
    return out
