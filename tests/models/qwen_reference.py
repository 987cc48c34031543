"""qwen-vl-utils 0.0.14's ``smart_resize`` and ``fetch_image``, transcribed for the Qwen3-VL parity tests
(the references the tests compare umr against; umr's own code shares none of it)."""

from __future__ import annotations

import math

from PIL import Image


def ref_smart_resize(height, width, factor, min_pixels, max_pixels):
    if max(height, width) / min(height, width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def ref_fetch_image(image, min_pixels, max_pixels, factor=32):
    image = image if isinstance(image, Image.Image) else Image.open(str(image))
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    else:
        image = image.convert("RGB")
    h, w = ref_smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
    return image.resize((w, h))
