"""Model families behind one :class:`Embedder` interface, and the loader."""

from .base import EmbedResult, Embedder, plan_batches
from .registry import ModelNotAvailable, ModelSpec, list_models, load_model, register

__all__ = ["EmbedResult", "Embedder", "ModelNotAvailable", "ModelSpec", "list_models", "load_model",
           "plan_batches", "register"]
