"""Safe image loading: every model family decodes images through here.

Images come from users' folders and benchmark pools, so anything can turn up:
missing files, truncated downloads, non-images, decompression bombs. Each failure
becomes an :class:`~umr.types.ItemError` with a plain reason instead of a PIL traceback.
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .types import ImageSource, ItemError

#: Largest image (in pixels) we agree to decode: 16k x 16k. A PNG whose header claims
#: 30000x30000 is refused before any pixel is decoded.
MAX_IMAGE_PIXELS = 16384 * 16384


def _open(source: ImageSource) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, bytes):
        return Image.open(io.BytesIO(source))
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"image path is a folder: {path}")
    return Image.open(path)


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
    img = _checked_open(source, item_id, max_pixels)
    try:
        img.load()
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError) as exc:
        raise ItemError(item_id, f"image cannot be decoded ({_describe(source)}): {exc}") from None


def _checked_open(source: ImageSource, item_id: str | None, max_pixels: int) -> Image.Image:
    try:
        img = _open(source)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ItemError(item_id, str(exc)) from None
    except UnidentifiedImageError:
        raise ItemError(item_id, f"not an image file ({_describe(source)})") from None
    except Image.DecompressionBombError as exc:
        raise ItemError(item_id, f"image too large, refused as a decompression bomb: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ItemError(item_id, f"image cannot be read ({_describe(source)}): {exc}") from None
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
