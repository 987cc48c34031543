"""Safe image loading — moved to :mod:`umr.core.images`.

Kept only so that code importing it from here keeps working; umr's own modules import
:mod:`umr.core.images` (the layer check in ``pyproject.toml`` forbids this module inside the library).
"""

from .core.images import MAX_IMAGE_PIXELS, decode_image, image_size, load_image  # noqa: F401

__all__ = ["MAX_IMAGE_PIXELS", "decode_image", "image_size", "load_image"]
