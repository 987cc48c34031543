"""sentence-transformers itself: the authors' library of every text model umr loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...core.items import Item
from .base import Reference


class SentenceTransformersReference(Reference):
    """``SentenceTransformer(folder).encode`` with the folder's own prompts (a query's
    instruction is the prompt, followed by a space, as umr documents for text models)."""

    def __init__(self, folder: Path, *, device: str, dtype: torch.dtype):
        import sentence_transformers
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True).to(dtype).eval()
        self.description = f"sentence-transformers {sentence_transformers.__version__}"

    def embed(self, item: Item) -> np.ndarray:
        if item.image is not None:
            raise ValueError("a text model's reference embeds text only")
        text = [item.text or ""]
        if item.is_query and item.instruction:
            out = self.model.encode(text, prompt=f"{item.instruction} ", convert_to_numpy=True)
        elif item.is_query:
            out = self.model.encode_query(text, convert_to_numpy=True)
        else:
            out = self.model.encode_document(text, convert_to_numpy=True)
        vector = out[0].astype(np.float32)
        return vector / np.linalg.norm(vector)
