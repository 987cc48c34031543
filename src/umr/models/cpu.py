"""What this CPU computes fast, for choosing a family's default dtype.

bfloat16 matmuls are several times faster than float32 only where the CPU multiplies bf16
natively (AMX tiles or AVX512-BF16); elsewhere PyTorch emulates them and bf16 is slower than
float32, so families keep float32 there.
"""

from __future__ import annotations

import functools

import torch

_NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def native_bf16_matmul() -> bool:
    """True when this CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in _NATIVE_BF16_FLAGS)
    except OSError:
        pass
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe() for probe in probes if probe is not None)


def cpu_default_dtype(*, bf16_close: bool) -> torch.dtype:
    """A family's dtype on this CPU when the caller names none: bfloat16 only if the family's
    vectors stay within cosine 0.999 of float32 (``bf16_close``, measured by
    ``benchmarks/embed_throughput.py``) and the CPU multiplies bf16 natively, else float32."""
    return torch.bfloat16 if bf16_close and native_bf16_matmul() else torch.float32
