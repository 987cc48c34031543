"""Devices and dtypes: which device a torch build can use, dtype names, and what a family computes
in on a CPU when the caller names no dtype.

:func:`check_device` refuses, in one line, a device this torch cannot use (``cuda`` on a CPU-only
build, ``cuda:3`` on a one-GPU machine, a name that is no device); every loader and ``Index.open``
call it before any work. :func:`resolve_dtype` reads the dtype names every backend accepts.

bfloat16 matmuls are several times faster than float32 only where the CPU multiplies bf16
natively (AMX tiles or AVX512-BF16); elsewhere PyTorch emulates them and bf16 is slower than
float32, so families keep float32 there. One switch, the environment variable
``UMR_CPU_BF16``, overrides the detection so that every process — the command line, the
library, Ray workers, subprocesses, ``umr serve`` — makes the same choice on any CPU:

* ``auto`` (or unset): bfloat16 where the CPU multiplies it natively;
* ``0``: never bfloat16 by default on a CPU;
* ``1``: bfloat16 wherever a family's vectors stay close to float32, emulated if need be.

Only families whose bfloat16 vectors stay within cosine 0.999 of float32 (``bf16_close``) ever
default to it, which is why an index or evaluation built under one setting is used under the
other (see :class:`umr.models.identity.ModelIdentity`).
"""

from __future__ import annotations

import functools
import os

import torch

#: the dtype names every backend accepts for its weights
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: "str | torch.dtype | None", default: torch.dtype | None = torch.float32):
    """A torch dtype from a name (``bfloat16``, ``bf16``, ...), a torch dtype, or None (``default``)."""
    if dtype is None:
        return default
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise ValueError(f"dtype must be one of {', '.join(sorted(DTYPES))}, not {dtype!r}")


def check_device(device: str | None) -> None:
    """A one-line ``ValueError`` for a device this torch cannot use: not a torch device name, CUDA
    on a CPU-only build or with no GPU visible, a CUDA index beyond the GPUs there are, MPS where
    there is none. None means the default, the CPU."""
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
            raise ValueError(f"device {device!r}: no CUDA device here (torch {torch.__version__} is {build}; "
                             f"use --device cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")

# -- the CPU bfloat16 switch -------------------------------------------------------------------

#: the environment variable that decides whether bf16-close families default to bfloat16 on a CPU
CPU_BF16_ENV = "UMR_CPU_BF16"
_CPU_BF16_VALUES = ("auto", "0", "1")
_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


class CpuSwitchError(ValueError):
    """``UMR_CPU_BF16`` holds a value that is not a setting."""


@functools.lru_cache(maxsize=None)
def native_bf16_matmul() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    return lists_native_bf16("/proc/cpuinfo")


def lists_native_bf16(cpuinfo: str | os.PathLike) -> bool:
    """Whether the ``flags`` of a ``/proc/cpuinfo``-style file name AMX-BF16 or AVX512-BF16
    (where the file cannot be read: what torch's own probes say)."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as lines:
            for line in lines:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe() for probe in probes if probe is not None)


def cpu_bf16_setting() -> str:
    """``$UMR_CPU_BF16`` as ``auto``, ``0`` or ``1`` (unset or empty: ``auto``); any other value is
    a :class:`CpuSwitchError` in one line (the command line checks it before any work)."""
    raw = os.environ.get(CPU_BF16_ENV, "")
    value = raw.strip().lower() or "auto"
    if value not in _CPU_BF16_VALUES:
        raise CpuSwitchError(f"{CPU_BF16_ENV}={raw!r} is not a setting: use auto (bfloat16 where the CPU "
                         f"multiplies it natively), 0 (never by default) or 1 (always where it is close)")
    return value


def bf16_by_default() -> bool:
    """Whether bf16-close families default to bfloat16 on this CPU: ``$UMR_CPU_BF16``, or under
    ``auto`` whether the CPU multiplies bf16 natively."""
    setting = cpu_bf16_setting()
    return native_bf16_matmul() if setting == "auto" else setting == "1"


def cpu_default_dtype(*, bf16_close: bool) -> torch.dtype:
    """A family's dtype on a CPU when the caller names none: bfloat16 only if the family's
    vectors stay within cosine 0.999 of float32 (``bf16_close``, measured by
    ``benchmarks/embed_throughput.py``) and :func:`bf16_by_default` says so, else float32."""
    return torch.bfloat16 if bf16_close and bf16_by_default() else torch.float32


def cpu_switch_environment() -> dict[str, str]:
    """The switch as this process has it set (empty when unset), for processes that do not inherit
    this one's environment (the workers of a Ray cluster started elsewhere)."""
    return {CPU_BF16_ENV: os.environ[CPU_BF16_ENV]} if CPU_BF16_ENV in os.environ else {}
