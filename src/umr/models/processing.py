"""The one interface of a family's processor: what turns items into a model's inputs.

Every family that prepares its inputs ahead of the forward pass (GME, Qwen3-VL-Embedding,
MM-Embed, CLIP-SF) has a processor with the same three methods, as colpali-engine's processors
share ``process_images`` / ``process_queries``:

* :meth:`Processor.cost` — a cheap size estimate of one item (tokens, image tokens included),
  read from image headers, never decoding: :meth:`~umr.models.base.Embedder.embed` sorts and
  packs batches by it, and refuses a bad item before any model work;
* :meth:`Processor.prepare` — one item made ready for the model (decoded, resized, tokenised),
  with no model work, so the prefetching loader can run it in worker threads;
* :meth:`Processor.collate` — a batch of prepared items as tensors, still on the CPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Generic, Literal, Sequence, TypeVar

import torch

InputT = TypeVar("InputT")
PreparedT = TypeVar("PreparedT")


class Processor(ABC, Generic[InputT, PreparedT]):
    """Items (``InputT``) to prepared inputs (``PreparedT``) to batches."""

    @abstractmethod
    def cost(self, item: InputT) -> int:
        """The item's forward cost (its sequence length), without decoding its image; raises
        :class:`~umr.core.items.ItemError` for an item the model cannot take."""

    @abstractmethod
    def prepare(self, item: InputT) -> PreparedT:
        """The item ready for the model: no model work (workers run it ahead of the forward
        pass); raises :class:`~umr.core.items.ItemError` for an item the model cannot take."""

    @abstractmethod
    def collate(self, prepared: Sequence[PreparedT]) -> dict[str, Any]:
        """The batch's inputs (tensors on the CPU) by name, as the family's forward reads them."""


def pad_ids(sequences: Sequence[Sequence[int]], pad_id: int, *,
            side: Literal["right", "left"] = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of token id sequences padded to the longest with ``pad_id``
    (right padding for embedders that pool the last real token, left for rerankers that read the
    last position)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        span = slice(0, len(sequence)) if side == "right" else slice(width - len(sequence), width)
        ids[row, span] = torch.tensor(list(sequence), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
