"""Qwen3-VL-Embedding (``qwen3-vl-embedding-2b`` / ``-8b``), and the Qwen3-VL processing it shares."""

from .modeling_qwen3vl import Qwen3VLEmbedder
from .processing_qwen3vl import Qwen3VLProcessor, embedding_messages

__all__ = ["Qwen3VLEmbedder", "Qwen3VLProcessor", "embedding_messages"]
