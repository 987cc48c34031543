"""Content fingerprints — moved to :mod:`umr.core.fingerprint`.

Kept only so that code importing it from here keeps working; umr's own modules import
:mod:`umr.core.fingerprint` (the layer check in ``pyproject.toml`` forbids this module inside the library).
"""

from .core.fingerprint import DIGEST_SIZE, FileDigests, file_digest, image_key, item_fingerprint  # noqa: F401

__all__ = ["DIGEST_SIZE", "FileDigests", "file_digest", "image_key", "item_fingerprint"]
