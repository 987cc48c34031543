"""Serving: an OpenAI-compatible embeddings API, search over an index, reranking and a search page."""

from .app import create_app
from .batcher import MicroBatcher
from .security import Limits, RequestRefused, Security, check_bind

__all__ = ["Limits", "MicroBatcher", "RequestRefused", "Security", "check_bind", "create_app"]
