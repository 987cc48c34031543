"""qwen-vl-utils 0.0.14's ``smart_resize`` and ``fetch_image`` for the Qwen3-VL parity tests: the
transcriptions ``umr verify`` runs (:mod:`umr.verify.references.qwen_vl`), which umr's fast path
shares nothing with, under the names and argument order these tests use."""

from __future__ import annotations

from umr.verify.references.qwen_vl import qwen_vl_utils_fetch_image, smart_resize


def ref_smart_resize(height, width, factor, min_pixels, max_pixels):
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    return smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)


def ref_fetch_image(image, min_pixels, max_pixels, factor=32):
    return qwen_vl_utils_fetch_image(image, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
