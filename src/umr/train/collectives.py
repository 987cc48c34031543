"""Every collective the trainer runs, in one place, each holding to NCCL's rule.

NCCL, which every multi-GPU run uses, accepts only tensors on the process's own CUDA device;
gloo, which CPU tests use, accepts anything. A CPU tensor slipping into a collective therefore
passes every CPU test and crashes the first multi-GPU run. So every wrapper here checks that a
tensor lives on the device :func:`join` bound, and raises :class:`DeviceMismatch` naming the
collective otherwise, on CPU as on GPU. Python values (counts, example ids) travel as objects,
which torch moves to the right device itself.

:func:`simulated` swaps the process group for a stand-in (tests: a fake world of several
processes on ``meta`` tensors, where a stray CPU tensor fails as it would under NCCL).

:class:`GradientReducer` averages gradients over processes in buckets launched during the
last backward pass of a step, as DDP does, instead of one parameter at a time afterwards.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist

#: how long a process waits for rank 0's file writes (checkpoints, the model); NCCL's own
#: timeout (10 minutes by default) would kill a job whose rank 0 writes a large checkpoint
WAIT_FOR_WRITES = datetime.timedelta(days=7)
#: gradient bytes per all-reduce (DDP's default bucket size)
BUCKET_BYTES = 25 << 20


class DeviceMismatch(RuntimeError):
    """A tensor on another device than the process's entered a collective (NCCL would fail)."""


class Work(Protocol):
    def wait(self) -> Any: ...


class Backend(Protocol):
    """What the collectives run on: torch.distributed's process group, or a stand-in in tests."""

    def world(self) -> tuple[int, int]:
        """``(rank, world size)``."""

    def all_gather(self, outputs: list[torch.Tensor], tensor: torch.Tensor) -> None: ...

    def all_gather_object(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order."""

    def all_reduce(self, tensor: torch.Tensor) -> Work:
        """Sum ``tensor`` over processes in place, asynchronously."""

    def wait_for_all(self) -> None:
        """A barrier that outlasts long file writes (see :data:`WAIT_FOR_WRITES`)."""


class TorchDistributed:
    """The process group a launcher set up (``torchrun``, ``accelerate launch``), or one process."""

    def __init__(self) -> None:
        self._slow_group = None

    def world(self) -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def all_gather(self, outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
        dist.all_gather(outputs, tensor)

    def all_gather_object(self, value: Any) -> list[Any]:
        out: list[Any] = [None] * self.world()[1]
        dist.all_gather_object(out, value)
        return out

    def all_reduce(self, tensor: torch.Tensor) -> Work:
        return dist.all_reduce(tensor, async_op=True)

    def wait_for_all(self) -> None:
        # a gloo group of its own: a CPU barrier with a long timeout, outside NCCL's watchdog
        if self._slow_group is None:
            self._slow_group = dist.new_group(backend="gloo", timeout=WAIT_FOR_WRITES)
        dist.barrier(group=self._slow_group)


@dataclass
class _State:
    backend: Backend = field(default_factory=TorchDistributed)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


_state = _State()


def join(device: str) -> torch.device:
    """Join the process group a launcher set up (``WORLD_SIZE``/``RANK``/``LOCAL_RANK``), if any,
    and bind this process's device: ``cuda`` becomes ``cuda:LOCAL_RANK``, one GPU per process.
    Returns that device; every collective checks its tensors against it."""
    resolved = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and isinstance(_state.backend, TorchDistributed):
        if resolved.type == "cuda" and "LOCAL_RANK" in os.environ:
            resolved = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo",
                                    device_id=resolved if resolved.type == "cuda" else None)
    if resolved.type == "cuda":
        if resolved.index is None:
            resolved = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(resolved)
    _state.device = resolved
    wait_for_all()  # all processes together: the slow barrier's group is made now, not mid-run
    return resolved


@contextlib.contextmanager
def simulated(backend: Backend, device: str | torch.device) -> Iterator[None]:
    """Run the collectives on ``backend`` with ``device`` as the process's device (tests)."""
    before = (_state.backend, _state.device)
    _state.backend, _state.device = backend, torch.device(device)
    try:
        yield
    finally:
        _state.backend, _state.device = before


def world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside a process group."""
    return _state.backend.world()


def _check(what: str, *tensors: torch.Tensor) -> None:
    for tensor in tensors:
        if tensor.device != _state.device:
            raise DeviceMismatch(f"{what}: a tensor on {tensor.device} entered a collective of a process on "
                                 f"{_state.device} (NCCL accepts only the process's own device)")


def all_gather(outputs: list[torch.Tensor], tensor: torch.Tensor) -> None:
    _check("all_gather", tensor, *outputs)
    _state.backend.all_gather(outputs, tensor)


def all_gather_object(value: Any) -> list[Any]:
    """Every process's picklable ``value`` (counts, ids), in rank order (``[value]`` alone)."""
    if world()[1] == 1:
        return [value]
    return _state.backend.all_gather_object(value)


def all_reduce(tensor: torch.Tensor) -> Work:
    """Sum ``tensor`` over processes in place; returns the pending work (``.wait()`` it)."""
    _check("all_reduce", tensor)
    return _state.backend.all_reduce(tensor)


def wait_for_all() -> None:
    """Every process waits here until all arrive, however long rank 0's writes take."""
    if world()[1] > 1:
        _state.backend.wait_for_all()


@dataclass
class _Bucket:
    params: list[torch.nn.Parameter]
    ready: int = 0
    pending: tuple[Work, torch.Tensor] | None = None


class GradientReducer:
    """Averages the gradients of ``params`` over processes, bucket by bucket, while backward runs.

    :meth:`arm` before the last backward pass of a step: from then on a bucket is all-reduced
    as soon as each of its parameters has its final gradient (a post-accumulate-grad hook),
    overlapping the rest of backward. Buckets are launched in one fixed order on every process
    (collectives must match across processes); a bucket waiting for a parameter the last pass
    did not reach is launched by :meth:`finish`, which waits for all of them. A parameter
    without a gradient on every process keeps none (as on one process); one with a gradient on
    some process gets the average, zeros counted for the others.
    """

    def __init__(self, params: list[torch.nn.Parameter], *, bucket_bytes: int = BUCKET_BYTES):
        self.params = list(params)
        self.buckets: list[_Bucket] = []
        filled = 0
        # backward reaches the last-registered parameters first: bucket them first
        for param in reversed(self.params):
            size = param.numel() * param.element_size()
            if not self.buckets or filled + size > bucket_bytes:
                self.buckets.append(_Bucket([]))
                filled = 0
            self.buckets[-1].params.append(param)
            filled += size
        self._bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket.params}
        self._armed = False
        self._next = 0
        self._hooks = ([p.register_post_accumulate_grad_hook(self._ready) for p in self.params]
                       if world()[1] > 1 else [])

    def arm(self) -> None:
        """The next backward pass is the step's last: reduce each bucket as soon as it is final."""
        self._armed = world()[1] > 1

    def _ready(self, param: torch.nn.Parameter) -> None:
        if not self._armed:
            return
        self.buckets[self._bucket_of[id(param)]].ready += 1
        while self._next < len(self.buckets) and \
                self.buckets[self._next].ready == len(self.buckets[self._next].params):
            self._launch(self.buckets[self._next])
            self._next += 1

    def _launch(self, bucket: _Bucket) -> None:
        parts = [p.grad.reshape(-1) if p.grad is not None else
                 torch.zeros(p.numel(), dtype=p.dtype, device=p.device) for p in bucket.params]
        flat = torch.cat(parts) / world()[1]
        bucket.pending = (all_reduce(flat), flat)

    def finish(self) -> None:
        """Launch what the last pass left, wait for every bucket, write the averages back."""
        if world()[1] == 1:
            return
        while self._next < len(self.buckets):
            self._launch(self.buckets[self._next])
            self._next += 1
        local = [p.grad is not None for p in self.params]
        anywhere = {id(p) for p, *flags in zip(self.params, *all_gather_object(local)) if any(flags)}
        for bucket in self.buckets:
            work, flat = bucket.pending
            work.wait()
            for param, values in zip(bucket.params, flat.split([p.numel() for p in bucket.params])):
                if id(param) in anywhere and param.grad is not None:
                    param.grad.copy_(values.view_as(param))
                elif id(param) in anywhere:
                    param.grad = values.view_as(param).clone()
            bucket.ready, bucket.pending = 0, None
        self._armed, self._next = False, 0

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
