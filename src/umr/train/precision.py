"""Mixed precision, decided once per run.

Trainable weights and the optimizer state are float32 always. Under ``bf16`` the frozen weights
load in bfloat16 (LoRA runs; full fine-tuning keeps float32 weights) and the whole step runs
under one bf16 autocast; frozen weights that are bfloat16 anyway (``dtype`` in
``model_options``, MM-Embed on a GPU) turn that autocast on; float16 weights are refused.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import torch

from .config import TrainConfig
from .errors import TrainingError


def load_options(config: TrainConfig) -> dict[str, Any]:
    """What the base model is loaded with: ``model_options``, and under ``bf16`` (LoRA or
    trained modules, not full fine-tuning) bfloat16 frozen weights unless a dtype is given."""
    options = dict(config.model_options)
    if config.bf16 and not config.full:
        options.setdefault("dtype", "bfloat16")
    return options


def _frozen_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters() if not p.requires_grad and p.is_floating_point()}


def step_dtype(module: torch.nn.Module, *, bf16: bool, announce: bool) -> torch.dtype | None:
    """bfloat16 under ``bf16`` or when ``module``'s frozen weights are bfloat16 anyway (said on
    stderr when ``announce``); refuses float16 weights."""
    frozen = _frozen_dtypes(module)
    if torch.float16 in frozen:
        raise TrainingError("the model's weights are float16, which trains unstably without loss scaling: "
                            "load it in bfloat16 (--bf16) or float32 (--dtype float32)")
    if not bf16 and torch.bfloat16 in frozen:
        if announce:
            print("umr train: the frozen weights are bfloat16: the step runs under bf16 autocast (as with "
                  "--bf16); trainable weights and the optimizer state stay float32", file=sys.stderr)
        return torch.bfloat16
    return torch.bfloat16 if bf16 else None


def precision_record(module: torch.nn.Module, autocast: torch.dtype | None) -> dict[str, Any]:
    """The dtypes the run computes in (recorded in training.json)."""
    frozen = sorted(str(dtype).removeprefix("torch.") for dtype in _frozen_dtypes(module))
    return {"frozen_weights": frozen, "trainable_weights": "float32",
            "autocast": str(autocast).removeprefix("torch.") if autocast else None}


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The run's autocast, if any (trainable float32 modules meet bf16 activations)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
