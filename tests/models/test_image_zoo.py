"""The odd-image zoo (tests/models/zoo.py) through every family that sees pixels, and through
the index: every file embedded or reported with a one-line reason, none lost, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

import umr
from umr import Item
from umr.index import Index
from umr.testing import write_tiny_clip, write_tiny_mmembed


@pytest.fixture(scope="module", params=["gme", "mm-embed", "clip"])
def model(request, tiny_gme_dir, tmp_path_factory):
    if request.param == "gme":
        return umr.load_model(tiny_gme_dir, min_image_tokens=4, max_image_tokens=16)
    if request.param == "mm-embed":
        return umr.load_model(write_tiny_mmembed(tmp_path_factory.mktemp("mm") / "tiny-mm-embed"))
    return umr.load_model(write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def _expected(expected: dict[str, str], outcome: str) -> set[str]:
    return {name for name, wanted in expected.items() if wanted == outcome}


def test_every_zoo_file_is_embedded_or_reported(model, image_zoo):
    folder, expected = image_zoo
    items = [Item.candidate(image=folder / name, id=name) for name in expected]
    result = model.embed(items, on_error="skip")
    assert {items[i].id for i in result.indices} == _expected(expected, "ok")
    reasons = {err.item_id: err.reason for err in result.errors}
    assert set(reasons) == _expected(expected, "error")
    assert all(reason and "\n" not in reason and "Traceback" not in reason for reason in reasons.values())
    assert "empty file (0 bytes)" in reasons["zero-bytes.png"]
    assert "decompression bomb" in reasons["bomb.png"] and "decompression bomb" in reasons["bomb.gif"]
    assert "truncated" in reasons["truncated.png"]
    assert np.isfinite(result.vectors).all()
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-4)


def test_extreme_geometries_embed_like_their_moderate_neighbours(model, image_zoo):
    """A 1 x 600,000 row is clamped the way the reference resize allows, not refused or crashed."""
    folder, _ = image_zoo
    vectors = model.encode_candidates([Item(image=folder / name) for name in
                                       ("row-1x600000.png", "column-600000x1.png", "one-pixel.png")])
    assert vectors.shape == (3, model.dim) and np.isfinite(vectors).all()


def test_gme_warns_once_per_call_for_clamped_aspect_ratios(tiny_gme_dir, image_zoo, caplog):
    """Two clamped images, each sized and then processed: one warning for the whole call."""
    import umr

    model = umr.load_model(tiny_gme_dir)
    folder, _ = image_zoo
    items = [Item(image=folder / name) for name in ("row-1x600000.png", "column-600000x1.png", "one-pixel.png")]
    with caplog.at_level("WARNING", logger="umr.models.gme.processing_gme"):
        model.encode_candidates(items)
    clamped = [r for r in caplog.records if "clamped" in r.getMessage()]
    assert len(clamped) == 1 and "2 size(s)" in clamped[0].getMessage()


def test_indexing_the_zoo_folder_loses_nothing(model, image_zoo, tmp_path):
    folder, expected = image_zoo
    with Index.create(tmp_path / "ix", model) as index:
        summary = index.index_corpus(folder, id_prefix="")  # ids as the zoo names them
        stored = set(index.ids())
    assert stored == _expected(expected, "ok")
    assert summary.added == len(stored) and not summary.skipped
    assert {e["id"] for e in summary.errors} == _expected(expected, "error")


@pytest.mark.parametrize("size", [(20, 700), (700, 20), (33, 1000)])
def test_clip_resamples_only_the_crop_window_of_a_very_long_image(monkeypatch, size):
    """The window path (taken past MAX_RESIZED_PIXELS) gives what the full resize + crop gives,
    up to rounding."""
    from PIL import Image

    from umr.models.clip_sf import processing_clip_sf as processing

    rng = np.random.RandomState(0)
    image = Image.fromarray((rng.rand(size[1], size[0], 3) * 255).astype("uint8"))
    for rounding in ("round", "floor"):
        transform = processing.ImageTransform(size=32, crop=32, crop_rounding=rounding)
        full = transform(image)
        monkeypatch.setattr(processing, "MAX_RESIZED_PIXELS", 100)
        windowed = transform(image)
        monkeypatch.undo()
        assert windowed.shape == full.shape == (3, 32, 32)
        # the same up to uint8 rounding (one level = 1/255/std = 0.015) inside, a few levels at the
        # crop's edges, where PIL's box filter sees the neighbours slightly differently
        diff = (windowed - full).abs()
        assert float((diff <= 0.016).float().mean()) >= 0.95 and float(diff.max()) <= 0.25


def _gme_reference_fetch_size(height, width, factor=28, min_pixels=4 * 28 * 28, max_pixels=16384 * 28 * 28):
    """GME's gme_inference.py ``smart_resize`` as written there (it divides by zero for 1 x 600,000)."""
    import math

    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if max(h_bar, w_bar) / min(h_bar, w_bar) > 200:
        if h_bar > w_bar:
            h_bar = w_bar * 200
        else:
            w_bar = h_bar * 200
    return h_bar, w_bar


def test_gme_first_resize_equals_the_reference_wherever_the_reference_works():
    from umr.models.gme.processing_gme import fetch_resize_size

    sides = [1, 2, 13, 27, 28, 29, 100, 333, 1000, 4000, 13000, 60000, 200000, 600000]
    refused = 0
    for height in sides:
        for width in sides:
            if height * width > 178_956_970:
                continue
            try:
                expected = _gme_reference_fetch_size(height, width)
            except ZeroDivisionError:
                refused += 1
                ours = fetch_resize_size(height, width)
                assert min(ours) == 28 and max(ours) == 28 * 200  # clamped, as qwen_vl_utils does
                continue
            assert fetch_resize_size(height, width) == expected, (height, width)
    assert refused > 0  # the grid reaches the geometries where the reference fails
