"""Preparing items ahead of the forward pass (umr.models.prefetch): the same vectors and the same
per-item errors as preparing inline, and never more than ``ahead`` batches prepared ahead."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

import umr
from umr.models.prefetch import PrefetchingLoader, resolved_workers
from umr.core.items import Item, ItemError


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Text, images and fused items, and one image whose header reads but whose data is cut off
    (it passes the size check and fails only when decoded, in a worker)."""
    folder = tmp_path_factory.mktemp("prefetch")
    rng = np.random.RandomState(0)
    items = []
    for i in range(10):
        path = folder / f"{i}.png"
        Image.fromarray(rng.randint(0, 256, (40 + 9 * i, 70, 3), dtype=np.uint8)).save(path)
        items.append(Item.candidate(image=path, id=f"img{i}"))
        items.append(Item.query(f"query number {i}", image=path if i % 2 else None, id=f"q{i}"))
    broken = folder / "broken.png"
    broken.write_bytes((folder / "3.png").read_bytes()[:200])
    items.insert(7, Item.candidate("fused", image=broken, id="broken"))
    return items


def test_prefetched_embedding_equals_inline_with_the_same_errors(tiny_gme_dir, mixed):
    model = umr.load_model(tiny_gme_dir)
    model.prefetch_workers = 1
    ahead = model.embed(mixed, batch_size=4, on_error="skip")
    model.prefetch_workers = 0
    inline = model.embed(mixed, batch_size=4, on_error="skip")
    assert [e.item_id for e in ahead.errors] == [e.item_id for e in inline.errors] == ["broken"]
    assert list(ahead.indices) == list(inline.indices) == [i for i in range(len(mixed)) if i != 7]
    assert np.array_equal(ahead.vectors, inline.vectors)
    model.prefetch_workers = 1
    with pytest.raises(ItemError, match="broken"):
        model.embed(mixed, batch_size=4)


def test_loader_stays_at_most_ahead_batches_beyond_the_running_one():
    items = [Item.candidate(f"t{i}") for i in range(12)]
    batches = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    seen: list[int] = []
    lock = threading.Lock()

    def prepare(item):
        with lock:
            seen.append(int(item.text[1:]))
        if item.text == "t4":
            raise ValueError("cannot prepare t4")
        return item.text

    loader = PrefetchingLoader(items, batches, prepare, workers=2, ahead=1)
    try:
        assert loader.take([0, 1, 2]) == ["t0", "t1", "t2"]
        assert max(seen) <= 5  # batches 0 and 1 only
        with pytest.raises(ItemError) as info:
            loader.take([3, 4, 5])
        assert info.value.index == 1 and "cannot prepare t4" in str(info.value)
        assert loader.take([3, 5]) == ["t3", "t5"]  # the rest of the batch, prepared once
        assert len(seen) == len(set(seen)) and max(seen) <= 8  # nothing twice; batch 3 not before batch 2 runs
        assert loader.take([6, 7, 8]) == ["t6", "t7", "t8"]
    finally:
        loader.close()


def test_a_worker_prepares_ahead_whenever_the_forward_runs_on_an_accelerator():
    """On an accelerator the CPU idles during the forward pass, so decoding overlaps it whatever
    the core count; on a CPU a worker only runs where a core is left beyond PyTorch's threads;
    an explicit count always wins."""
    import os

    import torch

    assert resolved_workers(None, "cuda") == 1
    assert resolved_workers(None, torch.device("cuda", 0)) == 1
    assert resolved_workers(None, "cpu") == (1 if (os.cpu_count() or 1) > torch.get_num_threads() else 0)
    assert resolved_workers(0, "cuda") == 0
    assert resolved_workers(3, "cpu") == 3
