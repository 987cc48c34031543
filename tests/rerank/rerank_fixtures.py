"""Test rerankers whose scores the tests control."""

from __future__ import annotations

import re

import numpy as np

from umr.rerank.base import Pair, Reranker
from umr.core.items import ItemError


class ConceptReranker(Reranker):
    """Answer logits under the test's control: the score says whether the candidate names the
    query's concept (``c07``), 0.5 when the candidate names none; ``fail`` ids are item errors."""

    name = "concept"
    batch_size = 2

    def __init__(self, fail=()):
        self.fail = set(fail)
        self.batches = []

    def _concept(self, item):
        found = re.search(r"c(?:oncept )?(\d\d)", f"{item.text} {item.image}")
        return found.group(1) if found else None

    def _cost(self, pair: Pair) -> int:
        return len(pair.candidate.text or "")

    def _score_batch(self, pairs):
        self.batches.append(len(pairs))

        def one(pair):
            if pair.candidate.id in self.fail:
                raise ItemError(pair.candidate.id, "image cannot be decoded")
            concept = self._concept(pair.candidate)
            if concept is None:
                return 0.5
            return 0.9 if concept == self._concept(pair.query) else 0.1

        return np.array(self._each_pair(pairs, one), dtype=np.float32)
