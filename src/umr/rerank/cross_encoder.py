"""Text cross-encoders: any sentence-transformers ``CrossEncoder`` folder, for text collections.

The query's and the candidate's texts go through the cross-encoder together, and its score (after
its own activation, e.g. a sigmoid for one-label models) is the relevance. Items without text are
item errors; a fused item is judged by its text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.devices import resolve_dtype
from ..core.items import ItemError
from ..models.registry import ModelNotAvailable
from .base import Pair, Reranker


class CrossEncoderReranker(Reranker):
    """A sentence-transformers ``CrossEncoder`` behind the reranker interface."""

    sees_images = False
    batch_size = 32
    cost_budget = 32 * 512

    def __init__(self, model, *, name: str = "cross-encoder"):
        self.model = model
        self.name = name

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        max_length: int | None = None) -> "CrossEncoderReranker":
        from sentence_transformers import CrossEncoder

        kwargs = {"torch_dtype": resolve_dtype(dtype)} if dtype is not None else {}
        try:
            model = CrossEncoder(str(path), device=device, max_length=max_length, local_files_only=True,
                                 model_kwargs=kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotAvailable(f"{path}: cannot load a cross-encoder: {first}") from None
        model.eval()
        return cls(model, name=Path(path).name)

    def options(self) -> dict:
        return {"max_length": self.model.max_length, "dtype": str(self.model.dtype).replace("torch.", "")}

    def _texts(self, pair: Pair) -> tuple[str, str]:
        for item in (pair.query, pair.candidate):
            if item.text is None:
                raise ItemError(item.id, "has no text, and a text cross-encoder cannot see images")
        return pair.query.text, pair.candidate.text

    def _cost(self, pair: Pair) -> int:
        query, candidate = self._texts(pair)
        return min(len(query) + len(candidate), 4 * (self.model.max_length or 512)) // 4 + 3

    def _score_batch(self, pairs: list[Pair]) -> np.ndarray:
        texts = self._each_pair(pairs, self._texts)
        return np.asarray(self.model.predict(texts, batch_size=len(texts), show_progress_bar=False,
                                             convert_to_numpy=True), dtype=np.float32)
