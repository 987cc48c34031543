"""The CPU bfloat16 switch (``UMR_CPU_BF16``) — moved to :mod:`umr.core.devices`.

Kept only so that code importing it from here keeps working; umr's own modules import
:mod:`umr.core.devices` (the layer check in ``pyproject.toml`` forbids this module inside the library).
"""

from ..core.devices import (CPU_BF16_ENV, CpuSwitchError, bf16_by_default, cpu_bf16_setting,  # noqa: F401
                            cpu_default_dtype, cpu_switch_environment, lists_native_bf16, native_bf16_matmul)

__all__ = ["CPU_BF16_ENV", "CpuSwitchError", "bf16_by_default", "cpu_bf16_setting", "cpu_default_dtype",
           "cpu_switch_environment", "lists_native_bf16", "native_bf16_matmul"]
