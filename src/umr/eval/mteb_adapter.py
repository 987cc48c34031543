"""Hand any umr model to the ``mteb`` package (2.x) as an encoder.

>>> import mteb, umr
>>> from umr.eval import MtebEncoder
>>> encoder = MtebEncoder(umr.load_model("minilm"))
>>> results = mteb.evaluate(encoder, mteb.get_tasks(tasks=["SciFact"]))   # doctest: +SKIP

``MtebEncoder`` implements mteb's ``EncoderProtocol``: ``encode(inputs, *, task_metadata,
hf_split, hf_subset, prompt_type)`` takes mteb's DataLoader of batches (``{"text": [...]}``,
``{"image": [...]}`` or both, queries optionally with ``"query"`` and ``"instruction"``) and
returns one L2-normalised row per input; ``similarity`` is the dot product (cosine for these
vectors). Queries (``prompt_type == "query"``) are embedded with ``encode_queries`` semantics:
with the batch's own instruction, else the task's prompt (mteb's ``TaskMetadata.prompt``), else
``instructions[task name]`` given here, else none. Documents are embedded without instructions.
mteb is an optional dependency (``pip install "umr[mteb]"``); it is imported only when used.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..core.items import Item
from ..models.base import Embedder


class MtebEncoder:
    """An :class:`~umr.models.base.Embedder` wrapped in mteb's encoder protocol."""

    def __init__(self, model: Embedder, *, instructions: Mapping[str, str] | None = None,
                 batch_size: int | None = None, name: str | None = None):
        self.model = model
        self.instructions = dict(instructions or {})
        self.batch_size = batch_size
        self._name = name or f"umr/{model.name}"
        self._meta = None

    @property
    def mteb_model_meta(self):
        if self._meta is None:
            from mteb.models.model_meta import ModelMeta

            self._meta = ModelMeta.create_empty(overwrites={
                "name": self._name if "/" in self._name else f"umr/{self._name}",
                "revision": "umr", "embed_dim": int(self.model.dim),
                "similarity_fn_name": "cosine", "framework": ["PyTorch"],
                "modalities": ["text", "image"], "use_instructions": True,
            })
        return self._meta

    def _instruction(self, task_metadata, prompt_type) -> str | None:
        if prompt_type is None or str(getattr(prompt_type, "value", prompt_type)) != "query":
            return None
        prompt = getattr(task_metadata, "prompt", None)
        if isinstance(prompt, dict):
            prompt = prompt.get("query")
        if prompt:
            return str(prompt)
        return self.instructions.get(getattr(task_metadata, "name", ""))

    def encode(self, inputs, *, task_metadata=None, hf_split: str = "", hf_subset: str = "",
               prompt_type=None, **kwargs: Any) -> np.ndarray:
        is_query = prompt_type is not None and str(getattr(prompt_type, "value", prompt_type)) == "query"
        default_instruction = self._instruction(task_metadata, prompt_type)
        items: list[Item] = []
        for batch in inputs:
            texts = batch.get("query") if is_query and batch.get("query") is not None else batch.get("text")
            images = batch.get("image")
            n = len(texts) if texts is not None else len(images) if images is not None else 0
            batch_instructions = batch.get("instruction") if is_query else None
            for i in range(n):
                text = texts[i] if texts is not None else None
                image = images[i] if images is not None else None
                if text is not None and not str(text).strip() and image is not None:
                    text = None
                instruction = None
                if is_query:
                    instruction = (batch_instructions[i] if batch_instructions is not None and batch_instructions[i]
                                   else default_instruction)
                items.append(Item(text=text, image=image, instruction=instruction, is_query=is_query,
                                  id=str(len(items))))
        if not items:
            return np.zeros((0, int(self.model.dim)), np.float32)
        return self.model.embed(items, batch_size=self.batch_size, show_progress_bar=False).vectors

    def similarity(self, embeddings1, embeddings2):
        import torch

        a = torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32)
        return torch.atleast_2d(a) @ torch.atleast_2d(b).T

    def similarity_pairwise(self, embeddings1, embeddings2):
        import torch

        a = torch.as_tensor(np.asarray(embeddings1), dtype=torch.float32)
        b = torch.as_tensor(np.asarray(embeddings2), dtype=torch.float32)
        return (torch.atleast_2d(a) * torch.atleast_2d(b)).sum(-1)


def as_mteb_encoder(model, **options) -> MtebEncoder:
    """``MtebEncoder(model, **options)``: any umr model as an mteb encoder."""
    return MtebEncoder(model, **options)
