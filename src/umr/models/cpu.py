"""What this CPU does natively: bfloat16 matmuls are a win only with AMX or AVX512-BF16."""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def native_bf16_matmul() -> bool:
    """Whether the CPU multiplies bfloat16 matrices in hardware (AMX-BF16 or AVX512-BF16).

    Elsewhere torch emulates bf16 and a bf16 matmul is many times slower than float32, so
    bf16 must never be a default there.
    """
    try:
        with open("/proc/cpuinfo") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        flags = []
    if "amx_bf16" in flags or "avx512_bf16" in flags:
        return True
    import torch

    return bool(torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
