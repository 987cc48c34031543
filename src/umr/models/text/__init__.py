"""Text embedders: sentence-transformers models with their own prompts (see :mod:`.modeling_text`)."""

from .modeling_text import TextEmbedder, TextPrompts

__all__ = ["TextEmbedder", "TextPrompts"]
