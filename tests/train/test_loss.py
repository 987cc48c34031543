"""The loss equals a hand computation; GradCache gives the full batch's gradients."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

import umr
from umr.train.loss import Temperature, distributed_info_nce, info_nce
from umr.core.items import Item

from train_fixtures import backward


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
    loss, value = distributed_info_nce(torch.cat([q, p, n]), (4, 4, 3), examples=range(4), temperature=temperature())
    assert float(loss.detach()) == pytest.approx(float(info_nce(q, p, n, temperature=0.05)), abs=1e-5)
    loss.backward()
    assert temperature.log_inverse.grad is not None
    assert not Temperature(0.05, learn=False).log_inverse.requires_grad


def _grads(embedder, groups, chunk):
    module = embedder.trainable_module()
    module.zero_grad(set_to_none=True)
    value = backward(embedder, groups, chunk=chunk)
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


def test_masking_with_a_learned_temperature_keeps_its_gradient_finite():
    # a hard negative nearly equal to its query scores above the positive: the guard masks it
    torch.manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    p = torch.nn.functional.normalize(q + 0.8 * torch.randn(3, 8), dim=-1)
    n = torch.nn.functional.normalize(q + 0.01 * torch.randn(3, 8), dim=-1)
    temperature = Temperature(0.05, learn=True)
    loss = info_nce(q, p, n, temperature=temperature(), false_negative_margin=0.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(temperature.log_inverse.grad)
    # equal to the softmax over the unmasked candidates, by hand
    scores = (q @ torch.cat([p, n]).T).detach()
    t = 0.05
    expected = 0.0
    for i in range(3):
        keep = [j for j in range(6) if j == i or scores[i, j] <= scores[i, i]]
        expected += -(scores[i, i] / t - torch.logsumexp(scores[i, keep] / t, 0))
    assert float(loss.detach()) == pytest.approx(float(expected) / 3, abs=1e-5)


def test_an_example_drawn_twice_is_not_its_own_negative():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    p = torch.tensor([[0.6, 0.8], [0.0, 1.0], [0.6, 0.8]])  # rows 0 and 2: one example drawn twice
    t = 0.5
    masked = info_nce(q, p, temperature=t, examples=[7, 3, 7])
    # query 0 (and its copy 2): candidates pos0 0.6 and pos1 0.0; its copy's positive is left out
    l0 = -math.log(math.exp(0.6 / t) / (math.exp(0.6 / t) + math.exp(0.0)))
    l1 = -math.log(math.exp(1.0 / t) / (math.exp(0.8 / t) * 2 + math.exp(1.0 / t)))
    assert float(masked) == pytest.approx((2 * l0 + l1) / 3, abs=1e-6)
    assert float(info_nce(q, p, temperature=t)) > float(masked)  # unmasked: the copy counts as a negative


def test_temperature_bounds_are_kept_and_reported():
    assert Temperature(0.005, learn=False).value == pytest.approx(0.005)  # a fixed τ is used as given
    with pytest.raises(ValueError, match="min_temperature 0.01"):
        Temperature(0.005, learn=True)
    learned = Temperature(0.02, learn=True, minimum=0.01)
    assert not learned.keep_in_bounds()
    with torch.no_grad():
        learned.log_inverse.add_(2.0)  # an optimizer step past the bound: τ = 0.02 / e²
    assert learned.keep_in_bounds() and learned.value == pytest.approx(0.01)
    assert not learned.keep_in_bounds()


def _lora_text_model(tiny_text_dir, dropout):
    from umr.train import lora

    model = umr.load_model(tiny_text_dir)
    module = model.trainable_module()
    module.eval()
    lora.add_lora(module, r=4, alpha=8, targets=model.lora_targets, dropout=dropout)
    lora.select_trainable(module, full=False, train_modules=[])
    lora.set_dropout(module, True)
    return model


def _text_groups(n=4):
    queries = [Item.query(f"question {i} about {w}") for i, w in enumerate(["llamas", "tokyo", "light", "ocean"][:n])]
    positives = [Item.candidate(f"an answer on {w}") for w in ["grass", "japan", "speed", "pacific"][:n]]
    negatives = [Item.candidate("bananas are yellow"), Item.candidate("cats purr")]
    return queries, positives, negatives


def test_grad_cache_replays_each_chunks_dropout(tiny_text_dir):
    model = _lora_text_model(tiny_text_dir, dropout=0.5)
    groups = _text_groups()

    def seeded(chunk, seed=3):
        torch.manual_seed(seed)
        return _grads(model, groups, chunk)

    plain_value, plain = seeded(None)
    assert seeded(None, seed=4)[1].keys() == plain.keys()
    assert max(float((seeded(None, seed=4)[1][n] - plain[n]).abs().max()) for n in plain) > 1e-3  # dropout is on
    one_value, one_chunk = seeded(100)  # GradCache in one chunk: two passes, one set of masks
    assert one_value == pytest.approx(plain_value, abs=1e-6)
    assert max(float((one_chunk[n] - plain[n]).abs().max()) for n in plain) <= 1e-6

    # GradCache in chunks of 3 equals embedding those same chunks with a graph, one after another
    _, cached = seeded(3)
    module = model.trainable_module()
    module.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    items = [item for group in groups for item in group]
    vectors = torch.cat([model.training_forward(items[s: s + 3]) for s in range(0, len(items), 3)])
    info_nce(*vectors.split([len(g) for g in groups]), temperature=0.05).backward()
    reference = {n: p.grad for n, p in module.named_parameters() if p.grad is not None}
    assert reference.keys() == cached.keys()
    assert max(float((reference[n] - cached[n]).abs().max()) for n in reference) <= 1e-6
