"""Items and modalities — moved to :mod:`umr.core.items`.

Kept only so that code importing it from here keeps working; umr's own modules import
:mod:`umr.core.items` (the layer check in ``pyproject.toml`` forbids this module inside the library).
"""

from .core.items import (ImageSource, Item, ItemError, Modality, SINGLE_VALUES, VideoInput,  # noqa: F401
                         VideoSource, as_items)

__all__ = ["ImageSource", "Item", "ItemError", "Modality", "SINGLE_VALUES", "VideoInput", "VideoSource", "as_items"]
