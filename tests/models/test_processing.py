"""Every family's processor implements the one Processor interface (cost, prepare, collate), and
collate batches exactly what prepare made."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import umr
from umr.core.items import Item
from umr.models.processing import Processor, pad_ids
from umr.testing import write_tiny_clip, write_tiny_colqwen, write_tiny_gme, write_tiny_mmembed, write_tiny_qwen3vl

WRITERS = {"gme": write_tiny_gme, "qwen3vl": write_tiny_qwen3vl, "mm-embed": write_tiny_mmembed,
           "clip-sf": write_tiny_clip, "colqwen": write_tiny_colqwen}


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "pic.png"
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 256, (40, 60, 3), dtype=np.uint8)).save(path)
    return [Item.candidate("a short text"), Item.query("find the picture", image=str(path)),
            Item.candidate("a longer text about a red bus on a wet street", image=str(path))]


def _items_for(family: str, items: list[Item]) -> list[Item]:
    """ColQwen embeds a text or an image, never both (colpali-engine has no prompt for the pair)."""
    if family != "colqwen":
        return items
    return [items[0], Item.candidate(image=items[1].image), Item.query("find the picture")]


@pytest.mark.parametrize("family", sorted(WRITERS))
def test_each_family_processor_costs_prepares_and_collates_under_the_same_names(family, items, tmp_path):
    items = _items_for(family, items)
    model = umr.load_model(WRITERS[family](tmp_path / family), dtype="float32")
    processor = model.processor
    assert isinstance(processor, Processor)
    costs = [processor.cost(item) for item in items]
    assert costs == [model._cost(item) for item in items]
    prepared = [processor.prepare(item) for item in items]
    batch = processor.collate(prepared)
    assert isinstance(batch["pixel_values"], torch.Tensor)  # some of the items have an image
    # the batch embeds as the items do one at a time
    with torch.no_grad():  # one vector per item, or one matrix of token vectors (late interaction)
        together = list(model.embed_prepared(prepared))
        alone = [model.embed_prepared([p])[0] for p in prepared]
    for batched, single in zip(together, alone):
        assert torch.allclose(torch.nn.functional.normalize(batched.float(), dim=-1),
                              torch.nn.functional.normalize(single.float(), dim=-1), atol=1e-4)


def test_pad_ids_pads_right_for_embedders_and_left_for_rerankers():
    ids, mask = pad_ids([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_ids([[5, 6, 7], [8]], 9, side="left")
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
