"""MM-Embed (``nvidia/MM-Embed``): LLaVA-NeXT vision on NV-Embed's bidirectional Mistral (``mm-embed``)."""

from .modeling_mmembed import MMEmbedEmbedder, MMEmbedModel, load_mmembed
from .processing_mmembed import MMEmbedProcessor, build_prompt

__all__ = ["MMEmbedEmbedder", "MMEmbedModel", "MMEmbedProcessor", "build_prompt", "load_mmembed"]
