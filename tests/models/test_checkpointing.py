"""Gradient checkpointing (``--grad-checkpointing``) for the MLLM families: every decoder layer and
vision block is recomputed in backward, the gradients are those of the unchecked step, and a
training step of an activation-heavy GME peaks at a fraction of the memory.

GME's packed decoder calls its layers' parts itself (not ``layer.forward``), so wrapping the
blocks' forward, all that checkpointing did before, recomputed nothing there: the recompute
counts below were 1 per step and the memory ratio ~1.0.
"""

from __future__ import annotations

import re

import pytest
import torch
from PIL import Image

import umr
from umr.train.loss import info_nce
from umr.core.items import Item

#: the repeated blocks whose MLP runs once per forward: LLM layers, Qwen-VL vision blocks, CLIP layers
BLOCK_MLP = re.compile(r".*(layers|blocks)\.\d+\.mlp")


def _items(tmp_path):
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for name, rgb in colours.items():
        Image.new("RGB", (56, 84), rgb).save(tmp_path / f"{name}.png")
    queries = [Item.query(f"a {name} picture of a house by the river", instruction="Find the image.")
               for name in colours]
    candidates = [Item.candidate(image=str(tmp_path / "red.png")),
                  Item.candidate(text="green fields", image=str(tmp_path / "green.png")),
                  Item.candidate(text="a blue car parked in the city")]
    return queries, candidates


def _step(model, queries, candidates):
    """One full fine-tuning step's gradients, and how often each block's MLP ran."""
    module = model.trainable_module()
    for p in module.parameters():
        p.requires_grad_(True)
    module.zero_grad(set_to_none=True)
    calls: dict[str, int] = {}
    # pre-hooks: a recompute stops as soon as it has rebuilt what backward needs, before the MLP returns
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
             for name, m in module.named_modules() if BLOCK_MLP.fullmatch(name)]
    try:
        torch.manual_seed(0)
        info_nce(model.training_forward(queries), model.training_forward(candidates)).backward()
    finally:
        for hook in hooks:
            hook.remove()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}, calls


def _compare(folder, tmp_path, **options):
    queries, candidates = _items(tmp_path)
    plain, plain_calls = _step(umr.load_model(folder, **options), queries, candidates)
    model = umr.load_model(folder, **options)
    wrapped = model.enable_gradient_checkpointing()
    checked, checked_calls = _step(model, queries, candidates)
    assert plain.keys() == checked.keys() and plain
    worst = max(float((plain[n] - checked[n]).abs().max()) for n in plain)
    assert worst <= 1e-5, worst
    return wrapped, plain_calls, checked_calls


def test_gme_packed_decoder_and_vision_blocks_recompute_with_equal_gradients(tiny_gme_dir, tmp_path):
    wrapped, plain, checked = _compare(tiny_gme_dir, tmp_path, max_image_tokens=16)
    decoder = {n for n in checked if "language_model" in n or n.startswith("model.layers")}
    vision = {n for n in checked if "visual" in n}
    assert len(decoder) == 2 and len(vision) == 2 and wrapped == 4
    # without the flag each block runs once per forward (decoder: queries and candidates; vision:
    # the candidates' images) ...
    assert {n: plain[n] for n in decoder} == {n: 2 for n in decoder} and {plain[n] for n in vision} == {1}
    # ... with it, once more in backward: the packed decoder's layers included
    assert checked == {n: 2 * plain[n] for n in plain}


def test_mmembed_bidirectional_mistral_and_clip_tower_recompute_with_equal_gradients(tmp_path):
    from umr.testing import write_tiny_mmembed

    folder = write_tiny_mmembed(tmp_path / "mm")
    wrapped, plain, checked = _compare(folder, tmp_path)
    llm = {n for n in checked if n.startswith("language_model.")}
    vision = {n for n in checked if n.startswith("vision_tower.")}
    # and the latent-attention pooling's two blocks (cross-attention, feed-forward)
    assert llm and vision and wrapped == len(llm) + len(vision) + 2
    assert {plain[n] for n in llm} == {2} and {plain[n] for n in vision} == {1}
    # MM-Embed reads the penultimate CLIP layer: the last one gets no gradient, so nothing to recompute
    unused = max(vision, key=lambda n: int(n.split(".")[-2]))
    assert checked == {n: plain[n] if n == unused else 2 * plain[n] for n in plain}


# -- memory -----------------------------------------------------------------------------------------


def _train_costs():
    """benchmarks/train_costs.py: its activation-heavy GME and its fresh-process step measurement."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "benchmarks" / "train_costs.py"
    spec = importlib.util.spec_from_file_location("train_costs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_checkpointing_cuts_the_peak_memory_of_a_gme_training_step(tmp_path):
    costs = _train_costs()
    folder = costs.activation_heavy_gme(tmp_path / "gme")
    plain = costs.step_memory(folder, checkpointing=False)
    checked = costs.step_memory(folder, checkpointing=True)
    assert plain["tokens_per_item"] > 200
    # four layers: about one layer's activations are held at a time (measured ~0.27; the bar is 0.75)
    assert checked["step_peak"] <= 0.75 * plain["step_peak"], (checked, plain)
