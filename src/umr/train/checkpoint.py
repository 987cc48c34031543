"""Resumable checkpoints, written so that a crash never leaves an unloadable one.

A checkpoint is a folder ``checkpoints/step-N`` holding ``state.pt``: the trainable
parameters (frozen ones equal the base model's), optimizer, scheduler, temperature, the data
position and every RNG state. It is written under a temporary name, flushed to disk, then
renamed: a folder named ``step-N`` is always complete, and a SIGKILL loses at most the steps
since the last one. A run resumes only with the settings it was trained with, but for those of
:data:`RESUMABLE_CHANGES`.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.atomic import replace_durably, write_bytes_atomic
from .errors import TrainingError

PREFIX = "step-"

#: settings a resumed run may change (how long, how often to save or log, where to run)
RESUMABLE_CHANGES = {"resume", "max_steps", "epochs", "progress", "save_every", "keep_checkpoints", "log_every",
                     "save_adapter", "device", "eval_data", "eval_every", "eval_benchmark", "on_nonfinite"}


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random state a run draws from: Python's, NumPy's, torch's CPU one and ``device``'s
    (CUDA: LoRA dropout draws there)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(folder: Path, step: int, state: dict[str, Any], *, keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step}"
    temporary = folder / f".tmp-{PREFIX}{step}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir()
    write_bytes_atomic(temporary / "state.pt", lambda handle: torch.save(state, handle))
    if final.exists():
        shutil.rmtree(final)
    replace_durably(temporary, final)
    for old in sorted(completed(folder))[:-keep] if keep > 0 else []:
        shutil.rmtree(folder / f"{PREFIX}{old}", ignore_errors=True)
    return final


def completed(folder: Path) -> list[int]:
    """Steps of the complete checkpoints in ``folder``, in increasing order."""
    if not folder.is_dir():
        return []
    steps = []
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and (path / "state.pt").is_file():
            try:
                steps.append(int(path.name[len(PREFIX):]))
            except ValueError:
                continue
    return sorted(steps)


def load_latest(folder: Path) -> dict[str, Any] | None:
    steps = completed(folder)
    if not steps:
        return None
    return torch.load(folder / f"{PREFIX}{steps[-1]}" / "state.pt", map_location="cpu", weights_only=False)


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``module``'s trainable parameters, by name (the frozen ones equal the base model's)."""
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def check_resumable(state: dict[str, Any], config: dict[str, Any], output: Path) -> None:
    """Refuse to resume checkpoint ``state`` (of the run in ``output``) under ``config`` (a
    :meth:`~umr.train.config.TrainConfig.to_dict`) that changes more than :data:`RESUMABLE_CHANGES`."""
    before = state["config"]
    changed = sorted(k for k in config if k not in RESUMABLE_CHANGES and before.get(k) != config[k])
    if changed:
        raise TrainingError(f"--resume: the checkpoint in {output} was trained with other "
                            f"{', '.join(changed)}; resume with the same settings (or a new --output)")


def load_trainable(module: torch.nn.Module, trainable: dict[str, torch.Tensor], output: Path) -> None:
    """Put a checkpoint's :func:`trainable_state` back into ``module`` (of the run in ``output``)."""
    named = dict(module.named_parameters())
    missing = set(trainable) - set(named)
    if missing:
        raise TrainingError(f"the checkpoint in {output} does not fit this model/LoRA setup "
                            f"({sorted(missing)[:3]} unknown)")
    with torch.no_grad():
        for name, value in trainable.items():
            named[name].copy_(value)
