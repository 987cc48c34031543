"""Model families behind one :class:`Embedder` interface, and the loader."""

from ..core.results import EmbedResult
from .base import Embedder, plan_batches
from .catalog import ModelSpec, list_models, register
from .registry import ModelNotAvailable, load_model

__all__ = ["EmbedResult", "Embedder", "ModelNotAvailable", "ModelSpec", "list_models", "load_model",
           "plan_batches", "register"]
