"""Why a run stops: errors every part of the loop may raise (the one module they all share)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """A run that cannot start or continue (no usable examples, a family that cannot train, ...)."""


class NonFiniteError(TrainingError):
    """A step's loss or gradient was not finite (``on_nonfinite="stop"``)."""
