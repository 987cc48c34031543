"""The optimizer update's rules: the learning-rate schedule, and numerics that cannot silently fail.

A step whose loss or gradient is not finite stops the run with the step named
(``on_nonfinite="stop"``) or is skipped with a counted warning (``"skip"``); weights that are not
finite, whatever made them so, are never written.
"""

from __future__ import annotations

import math

import torch

from .errors import NonFiniteError


def schedule_factor(step: int, *, total: int, warmup: int, kind: str) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress


def warmup_steps(warmup: float, total: int) -> int:
    """``warmup`` as a number of steps: a fraction of ``total`` below 1, a count otherwise."""
    return round(warmup * total) if 0 < warmup < 1 else int(warmup)


def scheduler(optimizer: torch.optim.Optimizer, *, total: int, warmup: int, kind: str
              ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: schedule_factor(s, total=total, warmup=warmup,
                                                                                  kind=kind))


def read_step(loss: torch.Tensor, norm: torch.Tensor, temperature_grad: torch.Tensor | None
              ) -> tuple[float, list[str]]:
    """The step's loss value and what in it is not finite (the loss, the gradient norm, a learned
    temperature's gradient), read from the device in one wait."""
    checks = [loss.float(), norm.float().to(loss.device)]
    if temperature_grad is not None:
        checks.append(temperature_grad.float())
    value, norm_value, *temperature = torch.stack(checks).tolist()
    bad = [f"{what} is {number}" for what, number in
           (("the loss", value), ("the gradient norm", norm_value),
            ("the temperature's gradient", temperature[0] if temperature else 0.0))
           if not math.isfinite(number)]
    return value, bad


def check_weights(names: list[str], params: list[torch.nn.Parameter], *, step: int) -> None:
    """Refuse to write weights that are not finite (whatever made them so)."""
    bad = [name for name, p in zip(names, params) if not bool(torch.isfinite(p).all())]
    if bad:
        raise NonFiniteError(f"after step {step}, {len(bad)} trainable tensor(s) are not finite "
                             f"(first: {bad[0]}); nothing was written. Lower --lr or check the data")
