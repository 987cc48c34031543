"""MM-Embed's prompts, tokenisation, pool masks and image preprocessing.

Prompts follow the reference ``NVMMEmbedModel.encode``::

    query with instruction   Instruct: {instruction}\\nQuery: <image>\\n{text}
    query without            Query: <image>\\n{text}
    candidate                <image>\\n{text}

An item without an image drops ``<image>\\n``; an item without text leaves ``{text}`` empty.
The tokenizer adds ``<s>`` and (with the checkpoint's ``add_eos_token``) ``</s>``; the single
``<image>`` token is later replaced by the image's features (576 patch features of the
*global* 336x336 view plus LLaVA-NeXT's image-newline vector; the high-resolution tiles are
not used, as the reference's ``global_image_patch_only`` does).

The instruction is masked out of pooling but not out of attention: the pool mask zeroes the
first ``instruction_length`` positions, where ``instruction_length`` is the length of the
tokenised text before the first ``"\\nQuery: "`` (with ``<s>``, and ``</s>`` when the tokenizer
adds it), exactly how the reference counts it. When that text holds ``<image>`` (a candidate or
an un-instructed query whose own text contains ``"\\nQuery: "``), the reference adds
``576 - 1``: its patch count minus one, i.e. the image's spliced positions (576 patches + the
image-newline = 577) minus two. umr adds ``image_tokens - 2``, the same rule for any vision
size. The count ignores truncation, as the reference's does; an item whose instruction leaves
no position to pool is refused (the reference would return NaN).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.images import image_size, load_image
from ...core.items import Item, ItemError
from ..processing import Processor

IMAGE_TAG = "<image>"
QUERY_PREFIX = "Query: "
#: what separates the instruction from the query in a prompt; its left part is not pooled
INSTRUCTION_SEPARATOR = "\n" + QUERY_PREFIX

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_prompt(item: Item, *, with_image: bool | None = None) -> str:
    """The reference's prompt for an item (see the module docstring); ``with_image`` overrides
    whether it holds the ``<image>`` tag (default: whether the item has an image)."""
    if item.is_query:
        if item.instruction is not None:
            template = f"Instruct: {item.instruction}{INSTRUCTION_SEPARATOR}{IMAGE_TAG}\n<text>"
        else:
            template = f"{QUERY_PREFIX}{IMAGE_TAG}\n<text>"
    else:
        template = f"{IMAGE_TAG}\n<text>"
    if not (item.image is not None if with_image is None else with_image):
        template = template.replace(f"{IMAGE_TAG}\n", "")
    return template.replace("<text>", item.text or "")


@dataclass
class ProcessedItem:
    input_ids: list[int]
    #: position of the ``<image>`` token in ``input_ids``, or None for a text-only item
    image_position: int | None
    #: (3, S, S) global view, or None
    pixel_values: torch.Tensor | None
    #: leading positions left out of pooling (the instruction)
    instruction_length: int


class MMEmbedProcessor(Processor[Item, ProcessedItem]):
    """MM-Embed's prompts, tokens and global 336x336 image views, one item at a time."""

    def __init__(self, tokenizer, *, image_token_id: int, image_size: int = 336,
                 image_tokens: int = 577, add_eos_token: bool = True, max_length: int = 512,
                 image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD, resample: int = 3,
                 crop_size: int | None = None):
        self.tokenizer = tokenizer
        self.image_token_id = image_token_id
        self.image_size = image_size
        self.crop_size = crop_size or image_size
        self.image_tokens = image_tokens
        self.add_eos_token = add_eos_token
        self.max_length = max_length
        self.image_mean = np.asarray(image_mean, dtype=np.float32)
        self.image_std = np.asarray(image_std, dtype=np.float32)
        self.resample = Image.Resampling(resample)
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        if tokenizer.convert_tokens_to_ids(IMAGE_TAG) != image_token_id:
            raise ValueError(f"the tokenizer's {IMAGE_TAG} token is not the config's image_token_index "
                             f"{image_token_id}")

    @classmethod
    def from_pretrained(cls, folder: str | Path, **kwargs) -> "MMEmbedProcessor":
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            size = cfg.get("size") or {}
            edge = size.get("shortest_edge") or size.get("height") or kwargs.get("image_size", 336)
            crop = cfg.get("crop_size") or {}
            crop = crop.get("height") if isinstance(crop, dict) else crop
            kwargs.setdefault("image_size", int(edge))
            if cfg.get("do_center_crop", True) and crop:
                kwargs.setdefault("crop_size", int(crop))
            kwargs.setdefault("image_mean", cfg.get("image_mean", OPENAI_CLIP_MEAN))
            kwargs.setdefault("image_std", cfg.get("image_std", OPENAI_CLIP_STD))
            kwargs.setdefault("resample", int(cfg.get("resample", 3)))
        return cls(tokenizer, **kwargs)

    # -- text ---------------------------------------------------------------------------

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _with_specials(self, ids: list[int], *, truncate: bool) -> list[int]:
        n_special = (self.bos_id is not None) + (self.add_eos_token and self.eos_id is not None)
        if truncate and self.max_length and len(ids) + n_special > self.max_length:
            ids = ids[: max(self.max_length - n_special, 0)]
        out = ([self.bos_id] if self.bos_id is not None else []) + list(ids)
        if self.add_eos_token and self.eos_id is not None:
            out.append(self.eos_id)
        return out

    def tokenize(self, prompt: str) -> list[int]:
        """``<s>`` + prompt tokens (+ ``</s>``), truncated to ``max_length`` like the tokenizer does."""
        return self._with_specials(self._ids(prompt), truncate=True)

    def instruction_length(self, prompt: str) -> int:
        """How many leading positions the reference leaves out of pooling (0 without an instruction).

        The reference's ``calculate_instruction_length``: the tokenised head (untruncated, with
        the tokenizer's specials), plus its hard-coded ``576 - 1`` when the head holds
        ``<image>``; 576 is the real model's patch count, so that is ``image_tokens - 2`` here.
        """
        if INSTRUCTION_SEPARATOR not in prompt:
            return 0
        head = prompt.split(INSTRUCTION_SEPARATOR)[0]
        n = len(self._with_specials(self._ids(head), truncate=False))
        if IMAGE_TAG in head:
            n += self.image_tokens - 2
        return n

    # -- images ---------------------------------------------------------------------------

    def pixel_values(self, image: Image.Image) -> torch.Tensor:
        """LLaVA-NeXT's global view: the whole image resized to S x S (bicubic), CLIP-normalised."""
        size = self.image_size
        image = image.resize((size, size), resample=self.resample)
        if self.crop_size != size:
            left = (size - self.crop_size) // 2
            image = image.crop((left, left, left + self.crop_size, left + self.crop_size))
        arr = (np.asarray(image, dtype=np.float64) * (1 / 255)).astype(np.float32)
        arr = (arr - self.image_mean) / self.image_std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    # -- items -----------------------------------------------------------------------------

    def check(self, item: Item) -> None:
        for what, value in (("text", item.text), ("instruction", item.instruction)):
            if value and IMAGE_TAG in value:
                raise ItemError(item.id, f"its {what} contains {IMAGE_TAG}, which MM-Embed reserves for the image")

    def cost(self, item: Item) -> int:
        self.check(item)
        n = len(self.tokenize(build_prompt(item)))
        if item.image is not None:
            image_size(item.image, item_id=item.id)  # header only: refuse missing/broken files early
            n += self.image_tokens - 1
        return n

    def prepare(self, item: Item) -> ProcessedItem:
        self.check(item)
        prompt = build_prompt(item)
        ids = self.tokenize(prompt)
        position, pixels = None, None
        if item.image is not None:
            pixels = self.pixel_values(load_image(item.image, item_id=item.id))
            if self.image_token_id not in ids:
                raise ItemError(item.id, f"the text before the image is longer than max_length={self.max_length}")
            position = ids.index(self.image_token_id)
        skipped = self.instruction_length(prompt)
        length = len(ids) + (self.image_tokens - 1 if position is not None else 0)
        if skipped >= length:
            raise ItemError(item.id, f"its instruction (the text before {INSTRUCTION_SEPARATOR!r}) covers "
                                     f"{skipped} positions and only {length} are left after truncation to "
                                     f"max_length={self.max_length}: the instruction leaves no tokens to "
                                     f"pool; use a larger max_length or a shorter instruction")
        return ProcessedItem(ids, position, pixels, skipped)

    def collate(self, prepared: Sequence[ProcessedItem]) -> dict[str, Any]:
        """The global views of the batch's images, stacked ``(N, 3, S, S)`` (absent without images).
        The token ids stay per item: the model splices each image's features in at its
        ``image_position``, which changes the sequence's length, so it pads after embedding."""
        pixels = [p.pixel_values for p in prepared if p.pixel_values is not None]
        return {"pixel_values": torch.stack(pixels)} if pixels else {}
