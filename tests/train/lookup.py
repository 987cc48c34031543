"""An embedder with handcrafted vectors, so a test knows every ranking before it runs.

Each candidate id owns one axis (``AXES``); a query's vector is its row of ``QUERY_WEIGHTS``
over those axes, so score(query, candidate) is proportional to the weight the test chose.
Registered as the model ``lookup-test`` (``install()``); items it does not know embed to the
last axis.
"""

from __future__ import annotations

import numpy as np

from umr.models.base import Embedder
from umr.models.catalog import REGISTRY, ModelSpec, register
from umr.models.registry import FAMILIES
from umr.core.items import Item

DIM = 32
AXES: dict[str, int] = {}
QUERY_WEIGHTS: dict[str, dict[str, float]] = {}


class LookupEmbedder(Embedder):
    name = "lookup-test"
    dim = DIM
    sees_images = True
    #: changes every vector a little: stands in for a retrained checkpoint at the same path
    shift = 0.0

    @classmethod
    def from_pretrained(cls, path, **_options):
        return cls()

    def vector_options(self) -> dict:
        return {"shift": self.shift}

    def _cost(self, item: Item) -> int:
        if item.image is not None:
            from umr.core.images import image_size

            image_size(item.image, item_id=item.id)  # a missing or broken image fails here, as in real models
        return 1

    def _embed_batch(self, items: list[Item]):
        out = np.zeros((len(items), DIM), np.float32)
        for row, item in enumerate(items):
            if item.is_query and item.id in QUERY_WEIGHTS:
                for cand, weight in QUERY_WEIGHTS[item.id].items():
                    out[row, AXES[cand]] = weight
            elif not item.is_query and item.id in AXES:
                out[row, AXES[item.id]] = 1.0
            else:
                out[row, DIM - 1] = 1.0
            out[row, DIM - 2] += self.shift
        return out


def install() -> None:
    FAMILIES["lookup-test"] = f"{__name__}:LookupEmbedder"
    if "lookup-test" not in REGISTRY:
        register(ModelSpec("lookup-test", "lookup-test", ".", "handcrafted-vector test embedder"))
