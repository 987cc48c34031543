"""Micro-batching: concurrent requests share one forward pass, and the model never runs on the event loop.

Requests that queue up while the model is busy are embedded together, as one ``model.embed``
call filled up to one forward pass by the model's own cost contract
(:meth:`~umr.models.base.ItemEmbedder.fits_one_pass` over :meth:`~umr.models.base.ItemEmbedder.check`);
a request that finds the model idle waits a short window for others. The model runs in one
worker thread that owns it, so a slow batch never blocks health checks or other I/O, and
32 one-sentence requests cost about one 32-sentence forward pass instead of 32.

Everything a request needs from the model thread (its vectors and its ``usage`` token count)
comes back from that one hop: a second hop per request would queue behind the next batch and
double every request's wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from ..core.items import Item
from ..core.results import EmbedResult
from ..models.base import ItemEmbedder

T = TypeVar("T")


@dataclass
class Embedded:
    """One request's answer: its vectors (or errors) and its text tokens (for ``usage``)."""

    result: EmbedResult
    tokens: int


@dataclass
class _Job:
    items: list[Item]
    future: asyncio.Future


class MicroBatcher:
    """Embeds items for many concurrent callers; ``enabled=False`` runs one request at a time.

    ``torch_threads`` (None: leave torch as it is) sets torch's intra-op threads from the model
    thread before its first forward; ``umr serve`` passes :func:`server_torch_threads`.
    """

    def __init__(self, model: ItemEmbedder, *, window_ms: float = 2.0, enabled: bool = True,
                 torch_threads: int | None = None):
        self.model = model
        self.window = window_ms / 1000.0
        self.enabled = enabled
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="umr-model",
                                            initializer=_set_torch_threads if torch_threads else None,
                                            initargs=(torch_threads,) if torch_threads else ())
        self._pending: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        #: what the model thread did so far (``/v1/stats``; the serve benchmark's time split)
        self.embed_calls = 0
        self.items = 0
        self.model_seconds = 0.0
        #: of which CPU in the model thread (with torch on one thread, all of the model's work)
        self.model_cpu_seconds = 0.0

    async def run(self, fn: Callable[..., T], *args) -> T:
        """Run ``fn(*args)`` in the model's thread (anything else that uses the model, e.g. an index add)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def embed(self, items: list[Item]) -> Embedded:
        """The items' vectors, or their errors (``on_error="skip"``), as ``model.embed`` gives them."""
        if not self.enabled:
            return (await self.run(self._embed_jobs, [items]))[1][0]
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._serve())
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _serve(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            if not self._pending:
                continue
            if len(self._pending) == 1 and self.window > 0:  # alone: wait a moment for company
                await asyncio.sleep(self.window)
            jobs = list(self._pending)  # what arrived while the model was busy; more keeps arriving
            try:
                taken, answers = await self.run(self._embed_jobs, [job.items for job in jobs])
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                taken, answers = len(jobs), [exc] * len(jobs)
            for _ in range(taken):
                self._pending.popleft()
            for job, answer in zip(jobs, answers):
                if job.future.done():
                    continue
                if isinstance(answer, Exception):
                    job.future.set_exception(answer)
                else:
                    job.future.set_result(answer)
            if self._pending:
                self._arrived.set()

    def _embed_jobs(self, requests: list[list[Item]]) -> tuple[int, list[Embedded]]:
        """In the model thread: embed the first requests that fill one forward pass (at least one)
        as one ``embed`` call; how many were taken, and their answers."""
        started, cpu = time.perf_counter(), time.thread_time()
        taken = 1
        if len(requests) > 1:  # one request needs no costing: embed plans its passes itself
            costs = [self._cost(item) for item in requests[0]]
            for items in requests[1:]:
                more = [self._cost(item) for item in items]
                if not self.model.fits_one_pass(costs + more):
                    break
                costs += more
                taken += 1
        sizes = [len(items) for items in requests[:taken]]
        batch = [item for items in requests[:taken] for item in items]
        result = self.model.embed(batch, show_progress_bar=False, on_error="skip")
        answers = [Embedded(part, count_tokens(self.model, items))
                   for part, items in zip(split_result(result, sizes), requests[:taken])]
        self.embed_calls += 1
        self.items += len(batch)
        self.model_seconds += time.perf_counter() - started
        self.model_cpu_seconds += time.thread_time() - cpu
        return taken, answers

    def _cost(self, item: Item) -> int:
        """The model's cost estimate; an item it cannot embed costs nothing (``embed`` reports it)."""
        try:
            return self.model.check(item)
        except Exception:  # noqa: BLE001 - the item's error comes from embed, with its position
            return 0

    def stats(self) -> dict:
        return {"enabled": self.enabled, "embed_calls": self.embed_calls, "items": self.items,
                "model_seconds": round(self.model_seconds, 3), "model_cpu_seconds": round(self.model_cpu_seconds, 3)}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def server_torch_threads() -> int:
    """Torch threads for a CPU server: every core but one, which is left to the event loop
    (HTTP parsing, JSON) so that it never fights the model's threads for a core.

    On 2 cores that is 1: on a busy 2-core machine a 2-thread forward of one sentence through the
    tiny GME took 175-530 ms against 5-6 ms on one thread (its threads wait for a core another
    process holds), and the event loop is such a process to the model.
    """
    import os

    return max(1, (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1) - 1)


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def count_tokens(model, items: list[Item]) -> int:
    """Text tokens of the items (``usage``); run in the model's thread, because a fast tokenizer's
    padding settings are shared state that a concurrent forward pass would see changed."""
    return sum(len(model.token_spans(item.text)) for item in items if item.text)


def split_result(result: EmbedResult, sizes: list[int]) -> list[EmbedResult]:
    """One result per caller (of the same kind: rows or token matrices), positions and errors
    relative to its own items."""
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [result.part(start, start + size) for start, size in zip(starts, sizes)]
