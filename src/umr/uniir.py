"""UniIR's text conventions — moved to :mod:`umr.core.uniir`.

Kept only so that code importing it from here keeps working; umr's own modules import
:mod:`umr.core.uniir` (the layer check in ``pyproject.toml`` forbids this module inside the library).
"""

from .core.uniir import format_string  # noqa: F401

__all__ = ["format_string"]
