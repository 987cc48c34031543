"""Plain text embedders: any sentence-transformers model.

Vectors equal ``SentenceTransformer.encode(..., normalize_embeddings=True)``. Query
instructions are prepended to the query text (``"{instruction} {text}"``), the common
convention of instruction-tuned text embedders; models without instructions simply get
none. An item with an image cannot be embedded by a text model and is reported as such.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..types import Item, ItemError
from .base import Embedder, Trainable, resolve_dtype


class TextEmbedder(Embedder, Trainable):
    batch_size = 32  # measured on CPU: 32 beats 64 (less padding per batch), see benchmarks/embed_throughput.py
    cost_budget = 32 * 256  # padded tokens per forward pass
    #: LoRA on the attention projections of BERT-, RoBERTa- and MPNet-style encoders
    lora_targets = r".*\.(query|key|value|q|k|v|q_proj|k_proj|v_proj)"

    def __init__(self, model, *, name: str | None = None):
        self.model = model
        self.tokenizer = model.tokenizer
        self.dim = int(model.get_embedding_dimension())
        self.name = name or "text"

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        **options) -> "TextEmbedder":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(path), device=device, local_files_only=True, **options)
        if dtype is not None:
            model = model.to(resolve_dtype(dtype))
        model.eval()
        return cls(model, name=Path(path).name)

    def text_of(self, item: Item) -> str:
        if item.image is not None:
            raise ItemError(item.id, f"{self.name} is a text model and cannot embed an image")
        if item.is_query and item.instruction:
            return f"{item.instruction} {item.text}"
        return item.text

    def _cost(self, item: Item) -> int:
        text = self.text_of(item)
        # the exact token count: batches sorted by it pad less, which more than pays for
        # tokenising twice (measured in benchmarks/embed_throughput.py)
        ids = self.tokenizer(text, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        return len(ids)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        # the forward SentenceTransformer.encode runs, without its inference_mode, so that
        # fine-tuning (training_forward) computes exactly what embedding computes
        from sentence_transformers.util import batch_to_device

        texts = [self.text_of(item) for item in items]
        features = batch_to_device(self.model.preprocess(texts), self.model.device)
        return self.model(features)["sentence_embedding"]

    # -- training (umr.train) ----------------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save(str(folder))
