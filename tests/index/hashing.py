"""A fast deterministic text embedder for index tests, registered as the model ``hash-test``.

Bag of hashed words (64-d). ``UMR_TEST_EMBED_DELAY`` (seconds per item) slows it down so a
test can kill ``umr index`` in the middle of its work; ``UMR_TEST_DIE_ONCE`` (a file path) kills
the first process that embeds (a Ray worker dying mid-run). Run as a script it is the ``umr`` command
with this model registered: ``python tests/index/hashing.py index CORPUS --index DIR --model hash-test``.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time

import numpy as np

from umr.models.base import Embedder
from umr.models.catalog import REGISTRY, ModelSpec, register
from umr.models.registry import FAMILIES
from umr.core.items import Item, ItemError

NAME = "hash-test"
DIM = 64


class HashEmbedder(Embedder):
    dim = DIM
    batch_size = 32
    sees_images = False

    def __init__(self, name: str = NAME):
        self.name = name

    @classmethod
    def from_pretrained(cls, path, **_options):
        return cls()  # PixelHashEmbedder inherits this and gets its own default name

    def _cost(self, item: Item) -> int:
        if item.image is not None:
            raise ItemError(item.id, f"{self.name} is a text model and cannot embed an image")
        return len(item.text) // 4 + 1

    def _embed_batch(self, items: list[Item]):
        delay = float(os.environ.get("UMR_TEST_EMBED_DELAY", "0") or 0)
        if delay:
            time.sleep(delay * len(items))
        die_once = os.environ.get("UMR_TEST_DIE_ONCE")  # a marker file: the first process to embed dies
        if die_once:
            try:
                os.close(os.open(die_once, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        out = np.zeros((len(items), DIM), np.float32)
        for row, item in enumerate(items):
            text = (item.text or "") if not (item.is_query and item.instruction) else f"{item.instruction} {item.text}"
            for word in text.lower().split():
                h = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[row, h[0] % DIM] += 1.0 if h[1] & 1 else -1.0
            out[row, DIM - 1] += 0.01  # never all-zero
        return out


class PixelHashEmbedder(HashEmbedder):
    """Stands in for an MLLM: embeds pixels (mean colour) and text (hashed words) of any item."""

    sees_images = True

    def __init__(self, name: str = "pixel-test"):
        self.name = name

    def _cost(self, item: Item) -> int:
        if item.image is not None:
            from umr.core.images import load_image

            load_image(item.image, item_id=item.id)  # decodes: corrupt images fail here
        return len(item.text or "") // 4 + 1

    def _embed_batch(self, items: list[Item]):
        from umr.core.images import load_image

        text_items = [Item(text=it.text or "", id=it.id) for it in items]
        out = super()._embed_batch(text_items)
        for row, item in enumerate(items):
            if item.image is not None:
                pixels = np.asarray(load_image(item.image, item_id=item.id), np.float32).reshape(-1, 3)
                out[row, :3] += pixels.mean(axis=0) / 255.0 * 4
        return out


def install() -> None:
    FAMILIES["hash-test"] = f"{__name__}:HashEmbedder"
    FAMILIES["pixel-test"] = f"{__name__}:PixelHashEmbedder"
    if NAME not in REGISTRY:
        here = os.path.dirname(os.path.abspath(__file__))
        register(ModelSpec(NAME, "hash-test", here, "hashing test embedder (64-d)"))
        register(ModelSpec("pixel-test", "pixel-test", here, "pixel test embedder (64-d, sees images)"))


install()

if __name__ == "__main__":
    sys.modules.setdefault("hashing", sys.modules["__main__"])
    FAMILIES["hash-test"] = "hashing:HashEmbedder"
    FAMILIES["pixel-test"] = "hashing:PixelHashEmbedder"
    from umr.cli import main

    sys.exit(main(sys.argv[1:]))
