"""The shared Embedder machinery: batching plan, order restore, normalisation, bad items."""

import numpy as np
import pytest
import torch

from umr import Item, ItemError
from umr.models.base import Embedder, plan_batches


class CountingEmbedder(Embedder):
    """Vector = hash-seeded random direction of the text; records every batch it sees."""

    name = "counting"
    dim = 8
    batch_size = 4
    cost_budget = 40

    def __init__(self):
        self.batches = []

    def _cost(self, item):
        if item.text == "bad-cost":
            raise ItemError(item.id, "refused by the cost estimate")
        return len(item.text or "") + 1

    def _embed_batch(self, items):
        self.batches.append([item.id for item in items])
        for i, item in enumerate(items):
            if item.text == "bad-forward":
                raise ItemError(item.id, "refused by the forward pass").at(index=i)
        rows = [torch.Generator().manual_seed(sum(map(ord, item.text))) for item in items]
        return torch.stack([3 * torch.randn(self.dim, generator=g) for g in rows])


def test_plan_batches_sorts_by_cost_and_respects_budget():
    costs = [5, 50, 7, 6, 30, 1]
    plan = plan_batches(costs, max_items=3, budget=60)
    assert sorted(i for b in plan for i in b) == list(range(len(costs)))
    flat = [i for b in plan for i in b]
    assert [costs[i] for i in flat] == sorted(costs, reverse=True)
    for batch in plan:
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(costs[i] for i in batch) <= 60


def test_fits_one_pass_is_the_rule_embed_batches_by():
    """The server's micro-batcher fills a pass with it: it must agree with embed's own plan."""
    model = CountingEmbedder()  # 4 items a pass, padded cost (items x costliest) within 40
    assert model.fits_one_pass([10, 10, 10, 10]) and not model.fits_one_pass([10, 10, 10, 11])
    assert not model.fits_one_pass([1] * 5) and model.fits_one_pass([]) and model.fits_one_pass([500])
    rng = np.random.default_rng(0)
    for _ in range(50):
        costs = rng.integers(1, 30, rng.integers(1, 12)).tolist()
        plan = plan_batches(costs, max_items=model.batch_size, budget=model.cost_budget)
        assert (len(plan) == 1) == model.fits_one_pass(costs)
        assert all(model.fits_one_pass([costs[i] for i in batch]) for batch in plan)


def test_plan_batches_gives_an_oversized_item_its_own_batch():
    assert plan_batches([100, 1, 1], max_items=8, budget=10) == [[0], [1, 2]]


def test_embed_restores_input_order_and_normalises():
    model = CountingEmbedder()
    texts = ["a" * n for n in (3, 30, 1, 12, 7, 25, 2)]
    out = model.encode_candidates(texts)
    alone = np.vstack([model.encode_candidates([t]) for t in texts])
    assert out.dtype == np.float32 and out.shape == (7, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out, alone, atol=1e-6)
    assert len(model.batches) > 7  # the first call was split into several cost-sorted batches


def test_bad_item_raises_with_its_position_and_id():
    model = CountingEmbedder()
    items = [Item.candidate("fine", id="x"), Item.candidate("bad-forward", id="y")]
    with pytest.raises(ItemError) as info:
        model.embed(items)
    assert info.value.item_id == "y" and info.value.index == 1
    assert "refused by the forward pass" in str(info.value)


def test_cost_errors_are_raised_before_any_model_work():
    model = CountingEmbedder()
    with pytest.raises(ItemError, match="cost estimate"):
        model.embed([Item.candidate("fine", id="a"), Item.candidate("bad-cost", id="b")])
    assert model.batches == []


def test_skip_leaves_bad_items_out_and_embeds_the_rest_identically():
    model = CountingEmbedder()
    items = [Item.candidate(t, id=str(i)) for i, t in
             enumerate(["one", "bad-forward", "three", "bad-cost", "five", None])]
    result = model.embed(items, on_error="skip")
    assert result.indices.tolist() == [0, 2, 4]
    assert [(e.index, e.item_id) for e in result.errors] == [(1, "1"), (3, "3"), (5, "5")]
    assert "neither text nor image" in result.errors[-1].reason
    good = model.encode_candidates(["one", "three", "five"])
    np.testing.assert_allclose(result.vectors, good, atol=1e-6)


def test_instruction_applies_to_queries_only():
    seen = []

    class Recorder(CountingEmbedder):
        def _embed_batch(self, items):
            seen.extend((item.is_query, item.instruction) for item in items)
            return super()._embed_batch(items)

    model = Recorder()
    model.encode_queries(["q1", Item.query("q2", instruction="own")], instruction="shared")
    model.encode_candidates([Item(text="c", instruction="dropped")])
    assert sorted(seen, key=str) == sorted([(True, "shared"), (True, "own"), (False, None)], key=str)


def test_on_error_must_be_known():
    with pytest.raises(ValueError, match="on_error"):
        CountingEmbedder().embed([], on_error="ignore")


def test_resolve_dtype_names_and_errors():
    from umr.core.devices import resolve_dtype

    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype(None) is torch.float32 and resolve_dtype(None, default=None) is None
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of .*not 'int8'"):
        resolve_dtype("int8")


class FragileEmbedder(CountingEmbedder):
    """Its sizing and its per-item preparation raise whatever a PIL plug-in or resize might."""

    def _cost(self, item):
        if item.text == "zero-size":
            return 1 // 0
        if item.text == "out-of-memory":
            raise MemoryError("cannot allocate")
        return super()._cost(item)

    def _embed_batch(self, items):
        def prepare(item):
            if item.text == "bad-plugin":
                import struct

                struct.unpack(">I", b"\x00")  # struct.error, as a broken TIFF tag gives
            if item.text == "bad-exif":
                raise SyntaxError("not a TIFF file (header b'\\x00' not valid)\nsecond line")
            return item
        if any(item.text == "model-bug" for item in items):
            raise RuntimeError("shape mismatch in layer 3")  # a forward error no item explains
        return super()._embed_batch(self._each_item(items, prepare))


def test_any_exception_while_sizing_or_preparing_an_item_is_that_items_error():
    model = FragileEmbedder()
    texts = ["one", "zero-size", "two", "bad-plugin", "three", "bad-exif"]
    result = model.embed([Item.candidate(t, id=t) for t in texts], on_error="skip")
    assert result.indices.tolist() == [0, 2, 4]
    reasons = {e.item_id: e.reason for e in result.errors}
    assert reasons == {"zero-size": "ZeroDivisionError: integer division or modulo by zero",
                       "bad-plugin": "struct.error: unpack requires a buffer of 4 bytes",
                       "bad-exif": "SyntaxError: not a TIFF file (header b'\\x00' not valid)"}
    np.testing.assert_allclose(result.vectors, model.encode_candidates(["one", "two", "three"]), atol=1e-6)
    with pytest.raises(ItemError, match="item 'bad-plugin': struct.error: unpack") as info:
        model.embed([Item.candidate("one", id="one"), Item.candidate("bad-plugin", id="bad-plugin")])
    assert info.value.index == 1


def test_whole_run_errors_still_stop_the_run():
    model = FragileEmbedder()
    with pytest.raises(MemoryError):
        model.embed([Item.candidate("one"), Item.candidate("out-of-memory")], on_error="skip")
    with pytest.raises(RuntimeError, match="shape mismatch"):
        model.embed([Item.candidate("one"), Item.candidate("model-bug")], on_error="skip")
