"""Vector indexes: exact search, the embedded persistent index and the Milvus backend."""

from .exact import search_exact

__all__ = ["search_exact"]
