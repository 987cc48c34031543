"""The odd-image zoo (tests/models/zoo.py) through every family that sees pixels, and through
the index: every file embedded or reported with a one-line reason, none lost, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

import umr
from umr import Item
from umr.index import Index
from umr.models.clip_sf import write_tiny_clip
from umr.models.mmembed import write_tiny_mmembed


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


def test_indexing_the_zoo_folder_loses_nothing(model, image_zoo, tmp_path):
    folder, expected = image_zoo
    with Index.create(tmp_path / "ix", model) as index:
        summary = index.index_corpus(folder)
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
