"""umr: universal multimodal retrieval.

One embedder for text, images and both (GME, MM-Embed, CLIP-SF, text models), one index,
one evaluation harness.

>>> import umr
>>> model = umr.load_model("minilm")
>>> q = model.encode_queries(["what is a llama?"])
>>> d = model.encode_candidates(["The llama is a domesticated South American camelid."])
>>> float((q @ d.T)[0, 0]) > 0.5
True
"""

from .index import Index
from .models import EmbedResult, Embedder, ModelNotAvailable, list_models, load_model
from .core.items import Item, ItemError, Modality

__all__ = ["EmbedResult", "Embedder", "Index", "Item", "ItemError", "Modality", "ModelNotAvailable",
           "list_models", "load_model"]
__version__ = "0.1.0"
