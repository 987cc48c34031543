"""Qwen3-VL inputs: conversations, ``fetch_image``-style resizing, patches, token ids, truncation.

One module for every Qwen3-VL model umr runs (the embedder here, the Qwen3-VL-Reranker in
``umr.rerank.qwen3vl``):
both reference implementations (QwenLM/Qwen3-VL-Embedding) build a chat conversation, render it
with the checkpoint's chat template and the generation prompt, load each image with
``qwen_vl_utils.fetch_image`` (``image_patch_size=16``) and call the Qwen3-VL processor with
``do_resize=False``. This module reproduces that, one sequence at a time:

* images as ``fetch_image`` does: RGBA pasted on white through its alpha, every other mode through
  PIL's ``convert("RGB")`` (so a palette image's transparency is dropped, not composited); aspect
  ratios over 200 refused; ``smart_resize`` with factor 32 (patch 16 x merge 2) between
  ``min_pixels`` and ``max_pixels``; PIL's default filter for RGB, which is bicubic;
* then, unresized, rescaled and normalised exactly as the Qwen2-VL image processor does, and cut
  into ``patch x patch`` cells repeated over the temporal patch;
* one ``<|image_pad|>`` per merged 32x32 token, text tokenised as the processor tokenises it;
* truncation as the processor call really truncates (``truncation=True, max_length=N``): the
  tokenizer keeps the first ``N`` tokens, dropping the end of the prompt. The processor then
  refuses a sequence whose image tokens were cut, so such an item is an error here too.

The reranker cuts differently (:func:`truncate_keeping_special`): its reference keeps the closing
tokens and, above ``max_length``, every special token, cutting only ordinary tokens.

Resizing needs only the image header, so :meth:`Qwen3VLProcessor.count_tokens` gives a sequence's
exact length cheaply (used to plan batches).
"""

from __future__ import annotations

import functools
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.images import decode_image, image_size
from ...core.items import ImageSource, Item, ItemError
from ..processing import Processor, pad_ids
from ..qwen_vl_patches import QwenVLImageSettings, read_patch_settings, smart_resize
from ..registry import ModelNotAvailable

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
MAX_RATIO = 200

#: the reference embedder's image bounds (``MIN_PIXELS`` / ``MAX_PIXELS``), in merged 32x32 tokens
DEFAULT_MIN_IMAGE_TOKENS = 4
DEFAULT_MAX_IMAGE_TOKENS = 1800
DEFAULT_MAX_LENGTH = 8192
#: the system turn of an item without an instruction (the reference embedder's default)
DEFAULT_INSTRUCTION = "Represent the user's input."
#: conversations whose token ids are kept between the cost estimate and encoding (an embed call's worth)
PROMPTS_REMEMBERED = 8192


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as ``qwen_vl_utils`` makes it: RGBA composited on white, any other mode converted."""
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def normalise_instruction(instruction: str | None) -> str | None:
    """The reference's instruction clean-up: stripped, ``.`` appended unless it ends in punctuation
    (any Unicode ``P*`` category); empty or blank counts as none."""
    if not instruction:
        return None
    instruction = instruction.strip()
    if not instruction:
        return None
    if not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction


def user_content(item: Item) -> list[dict[str, Any]]:
    """An item as the reference's user content: its image first, then its text."""
    content: list[dict[str, Any]] = []
    if item.image is not None:
        content.append({"type": "image"})
    if item.text is not None:
        content.append({"type": "text", "text": item.text})
    return content


def embedding_messages(item: Item, default_instruction: str = DEFAULT_INSTRUCTION) -> list[dict]:
    """The reference's conversation for an item: the instruction (queries only; candidates never
    carry one in umr) or the default as the system turn, then the item."""
    instruction = normalise_instruction(item.instruction) if item.is_query else None
    return [{"role": "system", "content": [{"type": "text", "text": instruction or default_instruction}]},
            {"role": "user", "content": user_content(item)}]


@dataclass
class ProcessedInput:
    """One sequence ready for the model: token ids and, for its images in order, patches and grids."""

    input_ids: list[int]
    pixel_values: np.ndarray | None = None  # (sum of grid_h * grid_w, C * T * P * P) float32
    grids: list[tuple[int, int, int]] = field(default_factory=list)


class Qwen3VLProcessor(QwenVLImageSettings, Processor[Item, ProcessedInput]):
    """Qwen3-VL conversations and images to model inputs, one sequence at a time.

    :meth:`cost`, :meth:`prepare` and :meth:`collate` make an item's embedding conversation
    (:func:`embedding_messages`); :meth:`encode` and :meth:`count_tokens` take any conversation
    (the Qwen3-VL-Reranker builds its own from a pair)."""

    def __init__(self, tokenizer, chat_template: str, *, min_image_tokens: int = DEFAULT_MIN_IMAGE_TOKENS,
                 max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS, max_length: int = DEFAULT_MAX_LENGTH,
                 patch_size: int = 16, merge_size: int = 2, temporal_patch_size: int = 2,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
                 rescale_factor: float = 1 / 255):
        super().__init__(min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens,
                         max_length=max_length, patch_size=patch_size, merge_size=merge_size,
                         temporal_patch_size=temporal_patch_size, image_mean=image_mean, image_std=image_std,
                         rescale_factor=rescale_factor)
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.vision_start_id = tokenizer.convert_tokens_to_ids(VISION_START)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._rendered_ids = functools.lru_cache(maxsize=PROMPTS_REMEMBERED)(self._ids_of_json)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **options: Any) -> "Qwen3VLProcessor":
        """The tokenizer, chat template and image settings of a Qwen3-VL checkpoint folder."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        template = read_chat_template(folder, tokenizer)
        return cls(tokenizer, template, **{**read_patch_settings(folder), **options})

    # -- text ------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The conversation through the checkpoint's chat template, with the generation prompt."""
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=True)

    def conversation_ids(self, messages: list[dict[str, Any]]) -> tuple[int, ...]:
        """Token ids of a rendered conversation, remembered (keyed by its JSON): the cost estimate
        tokenises once and :meth:`encode` reuses the ids."""
        return self._rendered_ids(json.dumps(messages, sort_keys=True, ensure_ascii=False))

    def _ids_of_json(self, messages_json: str) -> tuple[int, ...]:
        return tuple(self.tokenize(self.render(json.loads(messages_json))))

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer([text], padding=False, truncation=False)["input_ids"][0]

    # -- images ----------------------------------------------------------------------------------

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of ``width x height`` pixels."""
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels, floor_at_factor=False, max_ratio=MAX_RATIO)

    def num_image_tokens(self, width: int, height: int) -> int:
        """Merged (32x32-pixel) tokens of an image of ``width x height`` pixels."""
        h, w = self.resized_size(width, height)
        return (h // self.factor) * (w // self.factor)

    def load_image(self, source: ImageSource, *, item_id: str | None = None) -> Image.Image:
        """Decode, convert and resize an image as ``fetch_image`` does."""
        image = decode_image(source, item_id=item_id)
        try:
            h, w = self.resized_size(image.width, image.height)
        except ValueError as exc:
            raise ItemError(item_id, f"image of {image.width}x{image.height} cannot be embedded: {exc}") from None
        return to_rgb(image).resize((w, h))  # an RGB image: PIL's default filter is bicubic

    def patches(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Normalised patches ``(grid_h * grid_w, 3 * T * P * P)`` and the grid of a resized RGB image."""
        return self.cut_patches(image)

    # -- sequences -------------------------------------------------------------------------------

    def encode(self, messages: list[dict[str, Any]], images: Sequence[ImageSource] = (), *,
               item_id: str | None = None, image_ids: Sequence[str | None] | None = None) -> ProcessedInput:
        """Token ids and patches of a conversation whose image entries, in order, show ``images``.

        Not truncated (see :meth:`truncate`). Raises :class:`ItemError` for an image that cannot be
        used (naming ``image_ids[i]`` when given: a pair's images belong to different items), or
        text that spells a vision special token.
        """
        patches, grids = [], []
        for source, owner in zip(images, image_ids or [item_id] * len(images)):
            pixels, grid = self.patches(self.load_image(source, item_id=owner))
            patches.append(pixels)
            grids.append(grid)
        ids = list(self.conversation_ids(messages))
        self._check_vision_tokens(ids, len(grids), item_id)
        expanded: list[int] = []
        grid_iter = iter(grids)
        for token in ids:
            if token == self.image_token_id:
                _, gh, gw = next(grid_iter)
                expanded.extend([token] * (gh * gw // self.merge_size ** 2))
            else:
                expanded.append(token)
        return ProcessedInput(expanded, np.concatenate(patches) if patches else None, grids)

    def count_tokens(self, messages: list[dict[str, Any]], images: Sequence[ImageSource] = (), *,
                     item_id: str | None = None, image_ids: Sequence[str | None] | None = None) -> int:
        """The untruncated length of :meth:`encode`'s ids from the image headers alone."""
        tokens = len(self.conversation_ids(messages))
        for source, owner in zip(images, image_ids or [item_id] * len(images)):
            width, height = image_size(source, item_id=owner)
            try:
                tokens += self.num_image_tokens(width, height) - 1
            except ValueError as exc:
                raise ItemError(owner, f"image of {width}x{height} cannot be embedded: {exc}") from None
        return tokens

    def truncate(self, processed: ProcessedInput, *, item_id: str | None = None) -> ProcessedInput:
        """The first ``max_length`` tokens, as ``truncation=True`` keeps them; an item whose image
        tokens would be cut is refused, as the processor refuses it."""
        ids = processed.input_ids
        if len(ids) <= self.max_length:
            return processed
        if self.image_token_id in ids[self.max_length:]:
            needed = len(ids) - ids[::-1].index(self.image_token_id)
            raise ItemError(item_id, f"its image tokens end at position {needed}, beyond max_length="
                                     f"{self.max_length}; raise max_length or lower max_image_tokens")
        return ProcessedInput(ids[: self.max_length], processed.pixel_values, processed.grids)

    # -- items ----------------------------------------------------------------------------------

    def cost(self, item: Item) -> int:
        """The item's sequence length (cut at ``max_length``) from its image header alone."""
        images = [item.image] if item.image is not None else []
        return min(self.count_tokens(embedding_messages(item), images, item_id=item.id), self.max_length)

    def prepare(self, item: Item) -> ProcessedInput:
        """Token ids (cut at ``max_length``) and patches of one item."""
        images = [item.image] if item.image is not None else []
        return self.truncate(self.encode(embedding_messages(item), images, item_id=item.id), item_id=item.id)

    def collate(self, prepared: Sequence[ProcessedInput], *,
                padding_side: Literal["right", "left"] = "right") -> dict[str, Any]:
        """Padded rows as transformers' Qwen3-VL forward takes them (right padding for the embedder,
        which pools the last real token; the reranker reads the last position, so pads on the left),
        with the images' patches, grids and token types when the batch has any."""
        ids, mask = pad_ids([p.input_ids for p in prepared], self.pad_token_id, side=padding_side)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        grids = [g for p in prepared for g in p.grids]
        if grids:
            batch.update(pixel_values=torch.from_numpy(np.concatenate([p.pixel_values for p in prepared if p.grids])),
                         image_grid_thw=torch.tensor(grids, dtype=torch.long),
                         mm_token_type_ids=(ids == self.image_token_id).int())
        return batch

    def _check_vision_tokens(self, ids: list[int], n_images: int, item_id: str | None) -> None:
        if (ids.count(self.image_token_id) != n_images or ids.count(self.vision_start_id) != n_images
                or self.video_token_id in ids):
            raise ItemError(item_id, f"text must not contain the special tokens {VISION_START}, "
                                     f"{IMAGE_PAD} or {VIDEO_PAD}")


def truncate_keeping_special(ids: Sequence[int], max_length: int, special_ids: set[int], *,
                             closing: int = 5) -> list[int]:
    """Qwen3-VL-Reranker's cut: the last ``closing`` tokens (``<|im_end|>``, the generation prompt)
    are kept aside; if the rest is longer than ``max_length``, every special token of it is kept
    (image tokens included) and only the first ``max_length - #special`` ordinary tokens."""
    head, tail = list(ids[:-closing]), list(ids[-closing:])
    if len(head) <= max_length:
        return head + tail
    budget = max_length - sum(1 for t in head if t in special_ids)
    kept: list[int] = []
    for token in head:
        if token in special_ids:
            kept.append(token)
        elif budget > 0:
            kept.append(token)
            budget -= 1
    return kept + tail


def read_chat_template(folder: Path, tokenizer) -> str:
    """The checkpoint's chat template: ``chat_template.jinja``, ``chat_template.json``, or the tokenizer's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    stored = folder / "chat_template.json"
    if stored.is_file():
        return json.loads(stored.read_text(encoding="utf-8"))["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise ModelNotAvailable(f"{folder}: no chat template (chat_template.jinja or chat_template.json)")
