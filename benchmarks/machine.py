"""The machine a benchmark ran on, and how close a measured path comes to its matrix-multiply limit.

MFU (model FLOP utilisation) = FLOPs the model had to do / seconds taken / the machine's peak
FLOP/s for the same dtype. The peak is not a datasheet number: it is the best matrix-product
rate (``torch.matmul`` or ``F.linear``, see ``gemm_peak``) measured in the same run at the
model's own GEMM shape (e.g. tokens x hidden x intermediate), so "how far from the limit" compares like with like on this CPU, under the same
load. FLOPs are counted by torch's ``FlopCounterMode`` on the real call, so they follow the
real (unpadded) token counts of the path being measured.
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


@lru_cache(maxsize=1)
def _cpu_flags() -> tuple[str, set[str]]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return platform.processor() or "unknown", set()
    model, flags = platform.processor() or "unknown", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in ("unknown", ""):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def machine() -> dict[str, Any]:
    """What the numbers depend on: CPU, cores, threads, bf16 matrix units, versions."""
    model, flags = _cpu_flags()
    return {"cpu": model, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}


def gemm_peak(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """The best FLOP/s of an ``(m, k) x (k, n)`` product in ``dtype`` over about ``seconds`` of
    repeats, measured now, in whichever of two layouts is faster: a plain ``torch.matmul`` with a
    ``(k, n)`` right side, and ``F.linear`` with an ``(n, k)`` weight as every ``nn.Linear`` holds
    it. The two differ by 10x in bfloat16 on a CPU without native bf16 matmul (oneDNN takes the
    transposed weight, a fallback the other), and a peak must be the best this CPU can do."""
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    weight = b.t().contiguous()
    out = torch.empty(m, n, dtype=dtype)
    layouts = (lambda: torch.matmul(a, b, out=out), lambda: torch.nn.functional.linear(a, weight))
    best = float("inf")
    for run in layouts:
        for _ in range(3):  # warm up: thread pool, oneDNN kernels, caches
            run()
        deadline = time.perf_counter() + seconds / len(layouts)
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


#: torch counts the GPU attention kernels but not the one ``scaled_dot_product_attention`` runs on a CPU
_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def counted_flops(fn: Callable[[], Any], *models: torch.nn.Module) -> int:
    """FLOPs of one call of ``fn`` as torch counts them (matmuls, convolutions, attention).

    The parameters of ``models`` are frozen for the call: the counter's module tracker hooks
    autograd on every module input that requires grad, which fails under inference mode where a
    parameter is itself a module's input (MM-Embed's pooling latents)."""
    params = [p for model in models for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
            fn()
    finally:
        for p in params:
            p.requires_grad_(True)
    return int(counter.get_total_flops())


def mfu(flops: int, seconds: float, peak: float) -> float:
    """Achieved FLOP/s over the peak: 1.0 would be every cycle of the matrix units doing model work."""
    return flops / seconds / peak if seconds > 0 and peak > 0 else float("nan")
