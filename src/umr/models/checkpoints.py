"""Loading a transformers checkpoint folder the one way every family does: offline, with a
one-line :class:`~umr.models.registry.ModelNotAvailable` for an unreadable folder, and never with
randomly initialised tensors (a checkpoint missing weights the model needs is refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .registry import ModelNotAvailable


def load_checkpoint(auto_class: Any, folder: Path, *, what: str, **kwargs: Any):
    """``(config, model)`` from ``auto_class.from_pretrained(folder, ...)``; ``what`` names the
    weights in messages (``"the GME weights"``, ``"a complete Qwen3-VL checkpoint"``)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        model, info = auto_class.from_pretrained(str(folder), config=config, local_files_only=True,
                                                 output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotAvailable(f"{folder}: cannot load {what}: {first}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:  # never embed or score with randomly initialised tensors
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelNotAvailable(f"{folder}: the checkpoint lacks {len(missing)} tensor(s) the model needs "
                                f"({shown}); is it {what}?")
    return config, model
