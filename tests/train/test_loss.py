"""The loss equals a hand computation; GradCache gives the full batch's gradients."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import umr
from umr.train.grad_cache import backward_step
from umr.train.loss import Temperature, distributed_info_nce, info_nce
from umr.types import Item


def test_info_nce_equals_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    n = torch.tensor([[1.0, 0.0]])
    t = 0.5
    # query 0 scores: pos0 0.6, pos1 0.0, neg 1.0; query 1: pos0 0.8, pos1 1.0, neg 0.0
    l0 = -math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + math.exp(0.0) + math.exp(1.0 / t)))
    l1 = -math.log(math.exp(1.0 / t) / (math.exp(0.8 / t) + math.exp(1.0 / t) + math.exp(0.0)))
    assert float(info_nce(q, p, n, temperature=t)) == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # in-batch only
    l0 = -math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + 1))
    l1 = -math.log(math.exp(1.0 / t) / (math.exp(0.8 / t) + math.exp(1.0 / t)))
    assert float(info_nce(q, p, temperature=t)) == pytest.approx((l0 + l1) / 2, abs=1e-6)


def test_false_negative_guard_drops_only_negatives_above_the_margin():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    n = torch.tensor([[1.0, 0.0]])
    t = 0.5
    # query 0: the negative (1.0) beats its positive (0.6) by 0.4 > 0.1 -> masked; nothing else is
    l0 = -math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + math.exp(0.0)))
    l1 = -math.log(math.exp(1.0 / t) / (math.exp(0.8 / t) + math.exp(1.0 / t) + math.exp(0.0)))
    guarded = info_nce(q, p, n, temperature=t, false_negative_margin=0.1)
    assert float(guarded) == pytest.approx((l0 + l1) / 2, abs=1e-6)
    # a margin above every gap changes nothing
    assert float(info_nce(q, p, n, temperature=t, false_negative_margin=0.5)) == pytest.approx(
        float(info_nce(q, p, n, temperature=t)), abs=1e-7)


def test_one_process_loss_is_the_plain_loss_and_temperature_learns():
    torch.manual_seed(0)
    q, p, n = (torch.nn.functional.normalize(torch.randn(k, 8), dim=-1) for k in (4, 4, 3))
    temperature = Temperature(0.05, learn=True)
    assert temperature.value == pytest.approx(0.05)
    loss, value = distributed_info_nce(q, p, n, temperature=temperature())
    assert float(loss.detach()) == pytest.approx(float(info_nce(q, p, n, temperature=0.05)), abs=1e-5)
    loss.backward()
    assert temperature.log_inverse.grad is not None
    assert not Temperature(0.05, learn=False).log_inverse.requires_grad


def _grads(embedder, groups, chunk):
    module = embedder.trainable_module()
    module.zero_grad(set_to_none=True)
    value = backward_step(embedder, groups, lambda q, p, n: (info_nce(q, p, n, temperature=0.05),) * 2, chunk=chunk)
    return value, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _assert_same_gradients(embedder, groups, chunk):
    for p in embedder.trainable_module().parameters():
        p.requires_grad_(True)
    full_value, full = _grads(embedder, groups, None)
    cached_value, cached = _grads(embedder, groups, chunk)
    assert cached_value == pytest.approx(full_value, abs=1e-6)
    assert full.keys() == cached.keys() and full
    worst = max(float((full[n] - cached[n]).abs().max()) for n in full)
    assert worst <= 1e-5, worst


@pytest.mark.slow
def test_grad_cache_equals_full_batch_on_minilm():
    model = umr.load_model("minilm")
    queries = [Item.query(t) for t in ("what do llamas eat", "capital of japan", "speed of light", "who wrote hamlet",
                                       "largest ocean")]
    positives = [Item.candidate(t) for t in ("Llamas eat grass and hay.", "Tokyo is the capital of Japan.",
                                             "Light is fast.", "Shakespeare wrote Hamlet.", "The Pacific.")]
    negatives = [Item.candidate(t) for t in ("Bananas are yellow.", "The sea is salty.", "Cats purr.")]
    _assert_same_gradients(model, (queries, positives, negatives), chunk=2)


@pytest.mark.slow
def test_grad_cache_equals_full_batch_on_tiny_gme(tiny_gme_dir, tmp_path):
    model = umr.load_model(tiny_gme_dir, max_image_tokens=16)
    for name, rgb in (("red", (220, 20, 20)), ("blue", (20, 20, 220)), ("green", (20, 200, 20))):
        Image.new("RGB", (56, 28), rgb).save(tmp_path / f"{name}.png")
    queries = [Item.query("a red picture", instruction="Find the image."), Item.query(image=str(tmp_path / "blue.png")),
               Item.query("green", image=str(tmp_path / "green.png"))]
    positives = [Item.candidate(image=str(tmp_path / "red.png")), Item.candidate("a blue picture"),
                 Item.candidate("something green")]
    negatives = [Item.candidate(image=str(tmp_path / "green.png")), Item.candidate("a yellow picture")]
    _assert_same_gradients(model, (queries, positives, negatives), chunk=1)
