"""OCR failures on one image are that image's error (the engine is replaced: no ONNX run here)."""

from __future__ import annotations

import pytest
from PIL import Image

from umr import ItemError
from umr import ocr


def test_an_ocr_engine_failure_is_the_images_error(monkeypatch):
    def broken_engine(array):
        raise ValueError("cv2 error: (-215) !ssize.empty()\nin function resize")

    monkeypatch.setattr(ocr, "_get_engine", lambda: broken_engine)
    with pytest.raises(ItemError) as info:
        ocr.read_text(Image.new("RGB", (40, 20), "white"), item_id="scan")
    assert info.value.item_id == "scan"
    assert info.value.reason == "OCR failed: ValueError: cv2 error: (-215) !ssize.empty()"


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1)])
def test_extreme_geometries_reach_the_engine_with_a_valid_size(monkeypatch, size):
    seen = []
    monkeypatch.setattr(ocr, "_get_engine", lambda: lambda array: seen.append(array.shape) or (None, 0))
    assert ocr.read_text(Image.new("RGB", size), item_id="x") == ""
    height, width, channels = seen[0]
    assert height >= 1 and width >= 1 and channels == 3
