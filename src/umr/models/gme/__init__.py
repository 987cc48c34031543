"""GME: one vector space for text, images and both, on Qwen2-VL (``gme-2b``, ``gme-7b``)."""

from .modeling_gme import GmeEmbedder
from .processing_gme import GmeProcessor, build_prompt

__all__ = ["GmeEmbedder", "GmeProcessor", "build_prompt"]
