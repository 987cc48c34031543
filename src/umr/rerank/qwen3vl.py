"""Qwen3-VL-Reranker (``qwen3-vl-reranker-2b`` / ``-8b``), as its reference ``Qwen3VLReranker`` scores.

A pair becomes one conversation: a system turn asking whether the Document meets the Query and the
Instruct (answer "yes" or "no"), then a user turn ``<Instruct>: {instruction}<Query>:{query}\\n<Document>:
{document}`` where each side shows its image(s) first, then its text. The conversation is rendered
with the checkpoint's chat template and generation prompt, images loaded as ``fetch_image`` loads
them (the shared :mod:`umr.models.qwen3vl.processing_qwen3vl`), cut as the reference cuts (closing
tokens kept; above ``max_length`` every special token kept, ordinary tokens cut), left-padded, and
run through the Qwen3-VL model (no LM head). The score is ``sigmoid(h · (w_yes − w_no))``: ``h`` the
last token's final hidden state, ``w`` the LM-head rows of ``yes`` and ``no``.

The reference scores one pair per forward pass; here pairs are batched with left padding and an
attention mask, which leaves every score as it is alone (a test holds this).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.devices import resolve_dtype
from ..models.checkpoints import load_checkpoint
from ..models.qwen3vl.processing_qwen3vl import (DEFAULT_MAX_IMAGE_TOKENS, DEFAULT_MIN_IMAGE_TOKENS,
                                                 ProcessedInput, Qwen3VLProcessor, truncate_keeping_special)
from ..models.registry import ModelNotAvailable
from ..core.items import Item, ItemError
from .base import Pair, Reranker

SYSTEM_PROMPT = ('Judge whether the Document meets the requirements based on the Query and the Instruct '
                 'provided. Note that the answer can only be "yes" or "no".')
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
#: the reference's ``MAX_LENGTH``
DEFAULT_MAX_LENGTH = 10240


def side_content(item: Item, prefix: str) -> list[dict]:
    """One side of the pair as the reference lays it out: its prefix, its image, its text."""
    content: list[dict] = [{"type": "text", "text": prefix}]
    if item.image is not None:
        content.append({"type": "image"})
    if item.text is not None:
        content.append({"type": "text", "text": item.text})
    return content


def reranker_messages(pair: Pair, default_instruction: str = DEFAULT_INSTRUCTION) -> list[dict]:
    """The reference's conversation for a pair; the query's own instruction, else the default."""
    instruction = pair.query.instruction or default_instruction
    content = [{"type": "text", "text": "<Instruct>: " + instruction},
               *side_content(pair.query, "<Query>:"), *side_content(pair.candidate, "\n<Document>:")]
    return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": content}]


def pair_images(pair: Pair) -> tuple[list, list]:
    """The pair's images in conversation order, and the id of the item each belongs to."""
    sides = [item for item in (pair.query, pair.candidate) if item.image is not None]
    return [item.image for item in sides], [item.id for item in sides]


class Qwen3VLReranker(Reranker):
    """Qwen3-VL-Reranker relevance in [0, 1] for text, image and fused pairs."""

    batch_size = 8
    #: padded tokens (pairs x longest sequence) per forward pass
    cost_budget = 8192

    def __init__(self, model, processor: Qwen3VLProcessor, answer_weight: torch.Tensor, *, max_length: int,
                 default_instruction: str = DEFAULT_INSTRUCTION, name: str = "qwen3-vl-reranker",
                 device: str = "cpu"):
        self.model = model  # Qwen3VLModel: the decoder without its LM head
        self.processor = processor
        self.answer_weight = answer_weight  # w_yes - w_no, in the model's dtype
        self.max_length = int(max_length)
        self.default_instruction = default_instruction
        self.name = name
        self.device = torch.device(device)
        self.image_token_id = int(model.config.image_token_id)
        self.special_ids = set(processor.tokenizer.all_special_ids)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int = DEFAULT_MAX_LENGTH, instruction: str | None = None,
                        attn_implementation: str = "sdpa") -> "Qwen3VLReranker":
        """Load a Qwen3-VL-Reranker folder. Image bounds in merged 32x32 tokens (the reference's 4
        and 1800); ``max_length`` as the reference's (10240); ``instruction`` replaces the default
        for pairs whose query has none."""
        from transformers import AutoModelForImageTextToText

        folder = Path(path)
        torch_dtype = resolve_dtype(dtype, default=torch.bfloat16 if str(device).startswith("cuda")
                                    else torch.float32)
        min_image_tokens = DEFAULT_MIN_IMAGE_TOKENS if min_image_tokens is None else int(min_image_tokens)
        max_image_tokens = max(DEFAULT_MAX_IMAGE_TOKENS, min_image_tokens) if max_image_tokens is None \
            else int(max_image_tokens)
        min_image_tokens = min(min_image_tokens, max_image_tokens)
        if int(max_length) < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        processor = Qwen3VLProcessor.from_pretrained(folder, min_image_tokens=min_image_tokens,
                                                     max_image_tokens=max_image_tokens, max_length=max_length)
        vocab = processor.tokenizer.get_vocab()
        if "yes" not in vocab or "no" not in vocab:
            raise ModelNotAvailable(f"{folder}: the tokenizer has no single 'yes' / 'no' tokens: not a reranker")
        _, full = load_checkpoint(AutoModelForImageTextToText, folder, what="a complete Qwen3-VL-Reranker checkpoint",
                                  dtype=torch_dtype, attn_implementation=attn_implementation)
        head = full.lm_head.weight.detach()
        answer_weight = (head[vocab["yes"]] - head[vocab["no"]]).to(device)
        model = full.model.to(device).eval()
        return cls(model, processor, answer_weight, max_length=max_length,
                   default_instruction=instruction or DEFAULT_INSTRUCTION, name=folder.name, device=device)

    def options(self) -> dict:
        return {"dtype": str(self.answer_weight.dtype).replace("torch.", ""),
                "min_image_tokens": self.processor.min_image_tokens,
                "max_image_tokens": self.processor.max_image_tokens,
                "max_length": self.max_length, "instruction": self.default_instruction}

    # -- the Reranker hooks ----------------------------------------------------------------------

    def _cost(self, pair: Pair) -> int:
        images, owners = pair_images(pair)
        tokens = self.processor.count_tokens(reranker_messages(pair, self.default_instruction), images,
                                             item_id=pair.candidate.id, image_ids=owners)
        return min(tokens, self.max_length + 5)

    def _score_batch(self, pairs: list[Pair]) -> torch.Tensor:
        return self.forward(self._each_pair(pairs, self.process))

    def process(self, pair: Pair) -> ProcessedInput:
        """Token ids (cut as the reference cuts) and patches of one pair."""
        images, owners = pair_images(pair)
        encoded = self.processor.encode(reranker_messages(pair, self.default_instruction), images,
                                        item_id=pair.candidate.id, image_ids=owners)
        ids = truncate_keeping_special(encoded.input_ids, self.max_length, self.special_ids)
        if ids.count(self.image_token_id) != encoded.input_ids.count(self.image_token_id):
            raise ItemError(pair.candidate.id, f"its image tokens do not fit in max_length={self.max_length}")
        return ProcessedInput(ids, encoded.pixel_values, encoded.grids)

    # -- the model -------------------------------------------------------------------------------

    def forward(self, processed: list[ProcessedInput]) -> torch.Tensor:
        """Scores of processed pairs, left-padded into one batch."""
        batch = self.processor.collate(processed, padding_side="left")
        inputs = {name: value.to(self.device) for name, value in batch.items()}
        hidden = self.model(**inputs, use_cache=False).last_hidden_state[:, -1]
        return torch.sigmoid(hidden @ self.answer_weight).float()
