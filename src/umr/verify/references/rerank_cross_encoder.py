"""sentence-transformers' ``CrossEncoder`` itself: the authors' library of every text
cross-encoder umr loads, called the way its documentation calls it, one pair at a time."""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.items import Item
from .rerank_base import RerankReference


class CrossEncoderReference(RerankReference):
    """``CrossEncoder(folder).predict([(query, document)])`` at the folder's own settings."""

    def __init__(self, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import sentence_transformers
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(folder), device=device, local_files_only=True,
                                  model_kwargs={"torch_dtype": dtype}).eval()
        self.window = self.model.max_length
        self.description = f"sentence-transformers {sentence_transformers.__version__} CrossEncoder"

    def score(self, query: Item, document: Item) -> float:
        if query.text is None or document.text is None:
            raise ValueError("a text cross-encoder's reference scores texts only")
        return float(self.model.predict([(query.text, document.text)], show_progress_bar=False)[0])
