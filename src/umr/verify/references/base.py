"""What a reference is to ``umr verify``: the model's computation as its authors' code runs it,
written apart from umr's fast path (no packed decoder, no fused projections, no prefetching, no
cost-sorted batches), one item at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from ...core.items import Item


class Reference(ABC):
    """One family's reference embedding of single items."""

    #: what ran, for the report: the code and its version (``sentence-transformers 6.3.0``)
    description: str

    @abstractmethod
    def embed(self, item: Item) -> np.ndarray:
        """The L2-normalised float32 vector of one item, as the reference computes it."""
