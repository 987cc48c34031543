"""GME inputs: prompts, the two-stage image resize, patches and token ids.

This reproduces what GME's reference code feeds the model, item by item:

* the message ``<|im_start|>system\\n{instruction}<|im_end|>\\n<|im_start|>user\\n{image}{text}
  <|im_end|>\\n<|im_start|>assistant\\n<|endoftext|>``, with ``You are a helpful assistant.`` for
  candidates and for queries without an instruction;
* the image converted to RGB and resized twice: first as ``qwen_vl_utils.fetch_image`` does
  (factor 28, 4..16384 tokens, PIL's default filter), then as the Qwen2-VL image processor does
  (factor 28, ``min_image_tokens``..``max_image_tokens``, bicubic), then rescaled, normalised and
  cut into ``patch x patch`` cells repeated over the temporal patch;
* one ``<|image_pad|>`` per merged image token, and the whole sequence cut at ``max_length``.

Unlike the reference, each item is processed on its own, so any mix of text-only, image-only
and fused items can share a batch, and the token count of an item can be computed from the
image header alone (:meth:`GmeProcessor.cost`) to plan batches.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.images import image_size, load_image
from ...core.items import Item, ItemError
from ..processing import Processor
from ..qwen_vl_patches import QwenVLImageSettings, read_patch_settings, smart_resize

logger = logging.getLogger(__name__)

DEFAULT_INSTRUCTION = "You are a helpful assistant."
IMAGE_PART = "<|vision_start|><|image_pad|><|vision_end|>"
IMAGE_PAD = "<|image_pad|>"

#: first resize (``qwen_vl_utils.fetch_image`` as GME's code copies it)
FETCH_FACTOR = 28
FETCH_MIN_PIXELS = 4 * 28 * 28
FETCH_MAX_PIXELS = 16384 * 28 * 28
FETCH_MAX_RATIO = 200

#: prompts whose token ids are kept between the cost estimate and processing (an embed call's worth)
PROMPTS_REMEMBERED = 8192

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_prompt(item: Item, *, with_image: bool | None = None) -> str:
    """The message GME embeds for ``item``, with a single ``<|image_pad|>`` for its image."""
    instruction = item.instruction if (item.is_query and item.instruction is not None) else DEFAULT_INSTRUCTION
    has_image = item.image is not None if with_image is None else with_image
    user = (IMAGE_PART if has_image else "") + (item.text if item.text is not None else "")
    return (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n<|endoftext|>")


def fetch_resize_size(height: int, width: int, on_clamp=None) -> tuple[int, int]:
    """(height, width) after the first resize (``qwen_vl_utils.smart_resize``), ratio clamped at 200.

    GME's copy floors a side of a very long, thin image (1 x 500,000) to 0 and then divides by
    it; like ``qwen_vl_utils`` itself, a side is never less than one factor (28) here. Every
    other geometry gets exactly GME's sizes. ``on_clamp`` hears the ratio of a clamped image.
    """
    return smart_resize(height, width, factor=FETCH_FACTOR, min_pixels=FETCH_MIN_PIXELS,
                        max_pixels=FETCH_MAX_PIXELS, extreme_ratio="clamp", on_clamp=on_clamp,
                        max_ratio=FETCH_MAX_RATIO)


@dataclass
class ProcessedItem:
    """One item ready for the model: its token ids and, with an image, its patches."""

    input_ids: list[int]
    pixel_values: np.ndarray | None = None  # (grid_h * grid_w, C * T * P * P) float32
    grid_thw: tuple[int, int, int] | None = None


class GmeProcessor(QwenVLImageSettings, Processor[Item, ProcessedItem]):
    """Turns :class:`~umr.core.items.Item` objects into GME model inputs, one item at a time."""

    def __init__(self, tokenizer, *, image_token_id: int, min_image_tokens: int = 256,
                 max_image_tokens: int = 1280, max_length: int = 1800, patch_size: int = 14,
                 merge_size: int = 2, temporal_patch_size: int = 2,
                 image_mean=CLIP_MEAN, image_std=CLIP_STD, rescale_factor: float = 1 / 255):
        # the pixel bounds are in units of 28x28 tokens, as GME sets them
        super().__init__(min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens,
                         max_length=max_length, patch_size=patch_size, merge_size=merge_size,
                         temporal_patch_size=temporal_patch_size, image_mean=image_mean, image_std=image_std,
                         rescale_factor=rescale_factor, pixels_per_token_side=28)
        self.tokenizer = tokenizer
        self.image_token_id = int(image_token_id)
        #: token ids of a prompt, remembered: the cost estimate tokenises, prepare() reuses them
        self.prompt_ids = functools.lru_cache(maxsize=PROMPTS_REMEMBERED)(self._prompt_ids)
        #: aspect ratio of each image size clamped since the last warning (one warning per call)
        self._clamped: dict[tuple[int, int], float] = {}

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, image_token_id: int, min_image_tokens: int = 256,
                        max_image_tokens: int = 1280, max_length: int = 1800) -> "GmeProcessor":
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        return cls(tokenizer, image_token_id=image_token_id, min_image_tokens=min_image_tokens,
                   max_image_tokens=max_image_tokens, max_length=max_length, **read_patch_settings(folder))

    # -- images -------------------------------------------------------------------------------

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of ``width x height`` pixels."""
        def note(ratio: float) -> None:
            self._clamped[(width, height)] = ratio

        return self._processor_size(*fetch_resize_size(height, width, note))

    def _processor_size(self, height: int, width: int) -> tuple[int, int]:
        """The Qwen2-VL image processor's own resize, after ``fetch_image``'s."""
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels)

    def warn_clamped(self) -> None:
        """One warning for the images clamped since the last call (not one per image and pass)."""
        if self._clamped:
            logger.warning("images of %d size(s) with an aspect ratio over %d (up to %.1f) clamped as "
                           "qwen_vl_utils does", len(self._clamped), FETCH_MAX_RATIO, max(self._clamped.values()))
            self._clamped.clear()

    def image_grid(self, width: int, height: int) -> tuple[int, int, int]:
        """The ``(t, h, w)`` patch grid of an image of ``width x height`` pixels."""
        h, w = self.final_size(width, height)
        return 1, h // self.patch_size, w // self.patch_size

    def num_image_tokens(self, width: int, height: int) -> int:
        _, gh, gw = self.image_grid(width, height)
        return gh * gw // (self.merge_size ** 2)

    def resize(self, image: Image.Image) -> Image.Image:
        """Both resizes on an RGB image: PIL's default filter, then bicubic."""
        h1, w1 = fetch_resize_size(image.height, image.width)
        h2, w2 = self.final_size(image.width, image.height)
        return image.resize((w1, h1)).resize((w2, h2), resample=Image.Resampling.BICUBIC)

    def patches(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Normalised patches ``(grid_h * grid_w, 3 * T * P * P)`` and the grid of a resized RGB image."""
        return self.cut_patches(image)

    # -- items ----------------------------------------------------------------------------------

    def cost(self, item: Item) -> int:
        """Sequence length of ``item`` from its image header and its tokenised text (no decoding).

        Exact, so cost-budget batches hold what they promise: a character-based guess undercounts
        digits (one token each in Qwen2) and CJK text several times over.
        """
        tokens = len(self.prompt_ids(build_prompt(item)))  # the ids prepare() reuses
        if item.image is not None:
            width, height = image_size(item.image, item_id=item.id)
            try:
                tokens += self.num_image_tokens(width, height) - 1  # the one <|image_pad|> expanded
            except (ValueError, ArithmeticError) as exc:
                raise ItemError(item.id, f"image of {width}x{height} cannot be embedded: {exc}") from None
        return min(tokens, self.max_length)

    def prepare(self, item: Item) -> ProcessedItem:
        """Token ids (image tokens expanded, cut at ``max_length``) and patches of one item."""
        pixel_values = grid = None
        n_image_tokens = 0
        if item.image is not None:
            image = load_image(item.image, item_id=item.id)
            try:
                image = self.resize(image)
            except (ValueError, ArithmeticError) as exc:
                raise ItemError(item.id, f"image of {image.width}x{image.height} cannot be embedded: "
                                         f"{exc}") from None
            pixel_values, grid = self.patches(image)
            n_image_tokens = grid[1] * grid[2] // (self.merge_size ** 2)
        ids = list(self.prompt_ids(build_prompt(item)))
        pads = [i for i, tok in enumerate(ids) if tok == self.image_token_id]
        if len(pads) != (1 if item.image is not None else 0):
            raise ItemError(item.id, f"text must not contain the special token {IMAGE_PAD}")
        if pads:
            at = pads[0]
            ids = ids[:at] + [self.image_token_id] * n_image_tokens + ids[at + 1:]
            if at + n_image_tokens > self.max_length:
                raise ItemError(item.id, f"the image needs {n_image_tokens} tokens, more than fit in "
                                         f"max_length={self.max_length}; lower max_image_tokens")
        return ProcessedItem(input_ids=ids[: self.max_length], pixel_values=pixel_values, grid_thw=grid)

    def collate(self, prepared: Sequence[ProcessedItem]) -> dict[str, Any]:
        """The sequences back to back (GME's forward packs them: no padding anywhere) with their
        ``lengths``, and the images' patches and grids when the batch has any."""
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([t for p in prepared for t in p.input_ids], dtype=torch.long),
            "lengths": [len(p.input_ids) for p in prepared]}
        with_image = [p for p in prepared if p.pixel_values is not None]
        if with_image:
            batch["pixel_values"] = torch.from_numpy(np.concatenate([p.pixel_values for p in with_image]))
            batch["image_grid_thw"] = torch.tensor([p.grid_thw for p in with_image], dtype=torch.long)
        return batch

    def _prompt_ids(self, prompt: str) -> tuple[int, ...]:
        return tuple(self.tokenize([prompt])[0])

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=True, padding=False, truncation=False)["input_ids"]
