"""Vector indexes: exact search, the embedded persistent index and the Milvus backend.

``Index`` binds an embedder to a store: :class:`~umr.index.store.FlatStore` (the default, a
crash-safe folder with FAISS exact or HNSW search) or :class:`~umr.index.milvus.MilvusStore`.
"""

from .exact import search_exact
from .index import Index, ModelMismatch, Result, SourceConflict, Summary, Unrepresentable
from .base import StoreUnreachable
from .store import Filter, FlatStore, IndexStoreError, IndexLocked

__all__ = ["Filter", "FlatStore", "Index", "IndexStoreError", "IndexLocked", "ModelMismatch", "Result",
           "SourceConflict", "StoreUnreachable", "Summary", "Unrepresentable", "search_exact"]
