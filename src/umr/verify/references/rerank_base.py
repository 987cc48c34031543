"""What a reranker's reference is to ``umr verify --reranker``: the pair's score as the model's
authors compute it, written apart from umr's fast path (no cost-sorted batches, no left-padded
batching, no shared prompt code), one pair at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod

from ...core.items import Item


class RerankReference(ABC):
    """One reranker family's reference score of single (query, document) pairs."""

    #: what ran, for the report: the code and its version
    description: str
    #: the most tokens of a pair (or of one text) it reads, None when it cuts nothing: the long
    #: document probe is sized past it
    window: int | None = None

    @abstractmethod
    def score(self, query: Item, document: Item) -> float:
        """The relevance of ``document`` to ``query`` as the reference computes it."""
