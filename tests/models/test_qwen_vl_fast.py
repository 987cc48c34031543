"""The shared Qwen-VL fast paths (umr.models.qwen_vl_fast) against transformers' own modules,
and the one ``smart_resize`` with its two ways of treating extreme aspect ratios."""

from __future__ import annotations

import pytest
import torch

from umr.models.qwen_vl_fast import QuickGELU, rotate, speed_up_vision
from umr.models.qwen_vl_patches import smart_resize


def test_rotate_equals_rotate_half_formula_bit_for_bit():
    from transformers.models.qwen2_vl.modeling_qwen2_vl import rotate_half

    torch.manual_seed(0)
    x, cos, sin = torch.randn(37, 4, 64), torch.randn(37, 1, 64), torch.randn(37, 1, 64)
    assert torch.equal(rotate(x, cos, sin), x * cos + rotate_half(x) * sin)


def test_quick_gelu_equals_transformers():
    from transformers.activations import QuickGELUActivation

    x = torch.randn(50, 300)
    with torch.no_grad():
        assert torch.equal(QuickGELU()(x), QuickGELUActivation()(x))
    x.requires_grad_(True)
    QuickGELU()(x).sum().backward()  # the in-place form is only used without gradients
    assert x.grad is not None


@pytest.mark.parametrize("family", ["gme", "qwen3vl"])
def test_fast_vision_tower_equals_transformers(tmp_path, family):
    """Patch embedding, attention and activation swapped: the tower's outputs stay within 1e-5
    on two images of different sizes in one call; ``restore`` puts transformers' modules back."""
    from transformers import AutoModel

    if family == "gme":
        from umr.testing import write_tiny_gme as write
        patch = 14
    else:
        from umr.testing import write_tiny_qwen3vl as write
        patch = 16
    model = AutoModel.from_pretrained(str(write(tmp_path / family, seed=0))).eval()
    visual = model.visual
    grid = torch.tensor([[1, 4, 6], [1, 8, 2]])
    pixels = torch.randn(int(grid.prod(-1).sum()), 3 * 2 * patch * patch)
    originals = [type(m) for m in visual.modules()]
    with torch.no_grad():
        plain = model.get_image_features(pixels, image_grid_thw=grid).pooler_output
        restore = speed_up_vision(visual)
        assert [type(m) for m in visual.modules()] != originals
        fast = model.get_image_features(pixels, image_grid_thw=grid).pooler_output
    for a, b in zip(plain, fast):
        assert (a - b).abs().max() <= 1e-5
    restore()
    assert [type(m) for m in visual.modules()] == originals


def test_smart_resize_refuses_or_clamps_extreme_ratios():
    bounds = dict(factor=28, min_pixels=4 * 784, max_pixels=16384 * 784)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 7000, **bounds)
    heard = []
    assert smart_resize(10, 7000, extreme_ratio="clamp", on_clamp=heard.append, **bounds) == (28, 28 * 200)
    assert len(heard) == 1 and heard[0] > 200
    assert smart_resize(300, 500, **bounds) == smart_resize(300, 500, extreme_ratio="clamp", **bounds) == (308, 504)


def test_smart_resize_floor_at_factor():
    """Shrinking to a tiny ``max_pixels``: the image processors keep a side at one factor,
    ``qwen_vl_utils`` floors it to 0."""
    bounds = dict(factor=32, min_pixels=1024, max_pixels=4 * 1024)
    assert smart_resize(50, 5000, **bounds)[0] == 32
    assert smart_resize(50, 5000, floor_at_factor=False, **bounds)[0] == 0
