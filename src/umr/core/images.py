"""Safe image loading: every model family decodes images through here.

Images come from users' folders and benchmark pools, so anything can turn up:
missing files, truncated downloads, non-images, decompression bombs. Each failure
becomes an :class:`~umr.core.items.ItemError` with a plain reason instead of a PIL traceback.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .items import ImageSource, ItemError

#: Largest image (in pixels) we agree to decode: PIL's own hard limit (2 x its
#: ``Image.MAX_IMAGE_PIXELS``, about 13.4k x 13.4k), which ``Image.open`` enforces anyway. A PNG
#: whose header claims 30000x30000 is refused before any pixel is decoded.
MAX_IMAGE_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)

#: modes holding more than 8 bits per sample; ``convert("RGB")`` would clip them to white
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class _EmptyFile(ValueError):
    """A zero-byte file: worth saying so rather than "not an image"."""


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise IsADirectoryError(f"image path is a folder: {path}")
        if path.stat().st_size == 0:
            raise _EmptyFile(f"empty file (0 bytes): {path}")
        source = path
    # sizes up to the hard limit are fine (beyond it PIL raises); PIL's warnings about corrupt
    # EXIF and the like concern one file and would only clutter a run's output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Image.open(source)


def image_size(source: ImageSource, *, item_id: str | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) read from the header only: cheap enough to plan batches with."""
    img = _checked_open(source, item_id, max_pixels)
    return img.size


def load_image(source: ImageSource, *, item_id: str | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image to RGB, or raise :class:`ItemError` saying why it cannot be used.

    Grayscale, palette and RGBA images are converted with PIL's ``convert("RGB")``, as the
    reference implementations do (alpha is dropped, not composited).
    """
    img = decode_image(source, item_id=item_id, max_pixels=max_pixels)
    try:
        return img.convert("RGB")
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plug-in's conversion may raise anything
        raise ItemError.from_exception(item_id, exc, context=f"image cannot be decoded ({_describe(source)})") from None


def decode_image(source: ImageSource, *, item_id: str | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an image in its own mode (RGBA, P, L, ...; wide modes scaled to 8 bits), or raise
    :class:`ItemError`: for references that convert colour their own way (Qwen3-VL composites
    RGBA on white)."""
    img = _checked_open(source, item_id, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
        return _to_8bit(img) if img.mode in _WIDE_MODES else img
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL plug-ins raise anything on a broken file
        raise ItemError.from_exception(item_id, exc, context=f"image cannot be decoded ({_describe(source)})") from None


def _to_8bit(img: Image.Image) -> Image.Image:
    """A wide (16-bit, 32-bit int or float) grayscale image as 8 bits, as a viewer shows it.

    The references call ``convert("RGB")`` directly, which clips every value above 255, so a
    real 16-bit scan turns almost all white. Where every value already fits in 8 bits the image
    is left to ``convert`` (the references' result, exactly); otherwise integers are scaled as
    16-bit samples, and floats in [0, 1] are taken as intensities.
    """
    values = np.nan_to_num(np.asarray(img, dtype=np.float64))
    top = values.max() if values.size else 0.0
    if img.mode == "F" and 0.0 < top <= 1.0:
        values = values * 255.0
    elif top > 255.0:
        values = values / 257.0  # 65535 -> 255
    else:
        return img
    return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8), "L")


def _checked_open(source: ImageSource, item_id: str | None, max_pixels: int) -> Image.Image:
    try:
        img = _open(source)
    except (FileNotFoundError, IsADirectoryError, _EmptyFile) as exc:
        raise ItemError(item_id, str(exc)) from None
    except UnidentifiedImageError:
        raise ItemError(item_id, f"not an image file ({_describe(source)})") from None
    except Image.DecompressionBombError as exc:
        raise ItemError(item_id, f"image too large, refused as a decompression bomb: {exc}") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL plug-ins raise anything on a broken header
        raise ItemError.from_exception(item_id, exc, context=f"image cannot be read ({_describe(source)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ItemError(item_id, f"image has an empty size {width}x{height} ({_describe(source)})")
    if width * height > max_pixels:
        raise ItemError(
            item_id,
            f"image claims {width}x{height} pixels, over the limit of {max_pixels:,} "
            f"(a decompression bomb?) ({_describe(source)})",
        )
    return img


def _describe(source: ImageSource) -> str:
    if isinstance(source, Image.Image):
        return "PIL image"
    if isinstance(source, bytes):
        return f"{len(source)} bytes"
    return str(source)
