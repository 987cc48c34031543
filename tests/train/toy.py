"""A trainable embedder small enough to run anywhere, ``meta`` included: bag-of-characters
embeddings through one linear layer. Registered as the model ``toy-train`` (:func:`install`)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from umr.models.base import Embedder, Trainable
from umr.models.catalog import ModelSpec, register
from umr.models.registry import FAMILIES
from umr.core.items import Item, ItemError

WIDTH = 8


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(64, WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids).mean(dim=1))


class ToyEmbedder(Embedder, Trainable):
    name = "toy-train"
    dim = WIDTH
    lora_targets = r"proj"

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.net = ToyNet().to(self.device)

    @classmethod
    def from_pretrained(cls, path, *, device: str = "cpu", dtype: str | None = None) -> "ToyEmbedder":
        return cls(device)

    def _cost(self, item: Item) -> int:
        if item.image is not None:
            raise ItemError(item.id, "the toy embeds text only")
        return 1

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        ids = [[ord(c) % 64 for c in (item.text or "").ljust(8)[:8]] for item in items]
        return self.net(torch.tensor(ids, device=self.device))

    def trainable_module(self) -> nn.Module:
        return self.net

    def save_pretrained(self, folder: str | Path) -> None:
        torch.save(self.net.state_dict(), Path(folder) / "toy.pt")


def install(folder: Path) -> None:
    """Register ``toy-train``, its (empty) model folder being ``folder``."""
    FAMILIES["toy-train"] = f"{__name__}:ToyEmbedder"
    register(ModelSpec("toy-train", "toy-train", str(folder), "a toy trainable embedder"))
