"""What a reference is to ``umr verify``: the model's computation as its authors' code runs it,
written apart from umr's fast path (no packed decoder, no fused projections, no prefetching, no
cost-sorted batches), one item at a time."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from ...core.items import Item


class Reference(ABC):
    """One family's reference embedding of single items."""

    #: what ran, for the report: the code and its version (``sentence-transformers 6.3.0``)
    description: str

    @abstractmethod
    def embed(self, item: Item) -> np.ndarray:
        """One item as the reference computes it, float32: the L2-normalised vector, or for a
        late-interaction (multi-vector) model its token vectors ``(n_tokens, dim)``, rows L2-normalised."""


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder: ``model.safetensors``, or the shards its
    ``model.safetensors.index.json`` lists (the released checkpoints are sharded)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file()
             else ["model.safetensors"])
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state
