"""ColQwen inputs as colpali-engine (0.3.18, transformers 5) builds them, one item at a time.

* **queries** (``process_queries``): the text followed by ten ``<|endoftext|>`` (the query
  augmentation tokens), no chat template; a query's explicit instruction is prefixed as
  ``"{instruction} {text}"`` (colpali-engine has none: without one the ids are its ids exactly);
* **images** (``process_images``): the fixed prompt ``<|im_start|>user\\n<|vision_start|>
  <|image_pad|><|vision_end|>Describe the image.<|im_end|><|endoftext|>`` with one
  ``<|image_pad|>`` per merged 28x28 token; the image made RGB as the two steps do it
  (:func:`to_rgb`: an alpha channel dropped, a transparent colour key turned white), resized by
  transformers' torchvision backend: ``smart_resize`` (factor
  28 between the processor's ``min_pixels`` and ``max_pixels``), then ``interpolate`` on the uint8
  image, bicubic with antialias (torch's own kernel, not PIL's filter), then the fused
  rescale-normalise and Qwen2-VL's patch layout;
* **text candidates** (``process_texts``): the text alone;
* the M-RoPE positions the model gives each token (``get_rope_index``): text ``0, 1, ...``, an
  image's tokens ``(start, start + row, start + column)``, the text after it from ``start +
  max(rows, columns)``.

Sizes need only the image header, so :meth:`ColQwenProcessor.cost` is exact and cheap.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.images import decode_image, image_size
from ...core.items import ImageSource, Item, ItemError
from ..processing import Processor
from ..qwen_vl_patches import PatchCutter, smart_resize

VISUAL_PROMPT = ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe the image."
                 "<|im_end|><|endoftext|>")
IMAGE_PAD = "<|image_pad|>"
QUERY_AUGMENTATION_TOKEN = "<|endoftext|>"
#: colpali-engine's ``process_queries`` appends the augmentation token this many times
QUERY_AUGMENTATION_COUNT = 10
MAX_RATIO = 200
#: a merged image token covers 28x28 pixels (colpali-engine's ``max_num_visual_tokens * 28 * 28``)
PIXELS_PER_TOKEN = 28 * 28
DEFAULT_MAX_LENGTH = 32768
#: prompts whose token ids are kept between the cost estimate and processing (an embed call's worth)
PROMPTS_REMEMBERED = 8192


@dataclass
class ProcessedItem:
    """One sequence ready for the model: token ids, M-RoPE positions and, for an image, its patches."""

    input_ids: list[int]
    positions: np.ndarray  # (3, len(input_ids)) int64
    pixel_values: np.ndarray | None = None  # (grid_h * grid_w, 3 * T * P * P) float32
    grid_thw: tuple[int, int, int] | None = None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as colpali-engine and transformers together make it: PIL's ``convert("RGB")`` (an
    alpha channel is dropped, not composited), then transformers' ``convert_to_rgb``, which
    composites on white an image that still declares a transparent colour
    (``info["transparency"]``, kept by ``convert`` from a GIF, a palette or a tRNS PNG): the
    pixels of exactly that colour turn white."""
    rgb = image.convert("RGB")
    if rgb.info.get("transparency") is None:
        return rgb
    white = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgb.convert("RGBA")).convert("RGB")


def load_rgb(source: ImageSource, *, item_id: str | None) -> Image.Image:
    """The decoded image (:func:`umr.images.decode_image`) through :func:`to_rgb`; a failure is the item's error."""
    image = decode_image(source, item_id=item_id)
    try:
        return to_rgb(image)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plug-in's conversion may raise anything
        raise ItemError.from_exception(item_id, exc, context="image cannot be converted to RGB") from None


def read_image_settings(folder: Path) -> dict[str, Any]:
    """A checkpoint's ``preprocessor_config.json`` as transformers' Qwen2-VL image processor reads
    it: pixel bounds from ``min_pixels`` / ``max_pixels``, else ``size``, else its defaults."""
    config_file = folder / "preprocessor_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    size = config.get("size") or {}
    resample = config.get("resample", 3)
    if resample != 3:
        raise ValueError(f"{config_file}: resample={resample!r}; umr's ColQwen resizes bicubic (3) only")
    return {
        "min_pixels": int(config.get("min_pixels") or size.get("shortest_edge") or 56 * 56),
        "max_pixels": int(config.get("max_pixels") or size.get("longest_edge") or 28 * 28 * 1280),
        "patch_size": int(config.get("patch_size", 14)),
        "merge_size": int(config.get("merge_size", 2)),
        "temporal_patch_size": int(config.get("temporal_patch_size", 2)),
        "image_mean": tuple(config.get("image_mean", (0.48145466, 0.4578275, 0.40821073))),
        "image_std": tuple(config.get("image_std", (0.26862954, 0.26130258, 0.27577711))),
        "rescale_factor": float(config.get("rescale_factor", 1 / 255)),
    }


class ColQwenProcessor(Processor[Item, ProcessedItem]):
    """Items to ColQwen model inputs, one sequence at a time (umr's one processor interface)."""

    def __init__(self, tokenizer, *, min_pixels: int, max_pixels: int, patch_size: int = 14, merge_size: int = 2,
                 temporal_patch_size: int = 2, image_mean=(0.48145466, 0.4578275, 0.40821073),
                 image_std=(0.26862954, 0.26130258, 0.27577711), rescale_factor: float = 1 / 255,
                 max_length: int = DEFAULT_MAX_LENGTH):
        if not 1 <= int(min_pixels) <= int(max_pixels):
            raise ValueError(f"need 1 <= min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        if int(max_length) < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        self.tokenizer = tokenizer
        self.min_pixels, self.max_pixels = int(min_pixels), int(max_pixels)
        self.patch_size, self.merge_size = int(patch_size), int(merge_size)
        self.factor = self.patch_size * self.merge_size
        self.max_length = int(max_length)
        self.cut_patches = PatchCutter(patch_size=self.patch_size, merge_size=self.merge_size,
                                       temporal_patch_size=int(temporal_patch_size), image_mean=image_mean,
                                       image_std=image_std, rescale_factor=rescale_factor, fused=True)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.prompt_ids = functools.lru_cache(maxsize=PROMPTS_REMEMBERED)(self._prompt_ids)

    @classmethod
    def from_pretrained(cls, folder: str | Path, *, min_image_tokens: int | None = None,
                        max_image_tokens: int | None = None,
                        max_length: int = DEFAULT_MAX_LENGTH) -> "ColQwenProcessor":
        """The tokenizer and image settings of a checkpoint (or adapter) folder; ``min_image_tokens``
        / ``max_image_tokens`` replace its pixel bounds (colpali-engine's ``max_num_visual_tokens``)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        settings = read_image_settings(folder)
        if min_image_tokens is not None:
            settings["min_pixels"] = int(min_image_tokens) * PIXELS_PER_TOKEN
        if max_image_tokens is not None:
            settings["max_pixels"] = int(max_image_tokens) * PIXELS_PER_TOKEN
        return cls(tokenizer, max_length=max_length, **settings)

    # -- prompts ---------------------------------------------------------------------------------

    @staticmethod
    def prompt(item: Item) -> str:
        """The text colpali-engine tokenises for ``item`` (one ``<|image_pad|>`` for an image)."""
        if item.image is not None:
            if item.text is not None:
                raise ItemError(item.id, "ColQwen embeds a text or an image, not both (colpali-engine has no "
                                         "prompt for the two together)")
            return VISUAL_PROMPT
        if item.text is None:
            raise ItemError(item.id, "the item has neither text nor an image")
        if not item.is_query:
            return item.text
        text = f"{item.instruction} {item.text}" if item.instruction else item.text
        return text + QUERY_AUGMENTATION_TOKEN * QUERY_AUGMENTATION_COUNT

    def _prompt_ids(self, prompt: str) -> tuple[int, ...]:
        return tuple(self.tokenizer(prompt, add_special_tokens=True)["input_ids"])

    # -- images ----------------------------------------------------------------------------------

    def final_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of ``width x height`` pixels."""
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels, max_ratio=MAX_RATIO, round_to_zero=True)

    def num_image_tokens(self, width: int, height: int) -> int:
        h, w = self.final_size(width, height)
        return (h // self.factor) * (w // self.factor)

    def resize(self, image: Image.Image) -> np.ndarray:
        """An RGB image resized as transformers' torchvision backend does: torch's bicubic
        antialiased ``interpolate`` on the uint8 pixels (no resize when the size is already right)."""
        height, width = self.final_size(image.width, image.height)
        pixels = np.asarray(image, dtype=np.uint8)
        if (height, width) == pixels.shape[:2]:
            return pixels
        tensor = torch.from_numpy(np.array(pixels.transpose(2, 0, 1)))[None]  # a writable contiguous copy
        resized = torch.nn.functional.interpolate(tensor, size=[height, width], mode="bicubic", align_corners=False,
                                                  antialias=True)
        return resized[0].permute(1, 2, 0).numpy()

    # -- items -----------------------------------------------------------------------------------

    def cost(self, item: Item) -> int:
        """The exact sequence length of ``item`` (image header and tokenised prompt only)."""
        tokens = len(self.prompt_ids(self.prompt(item)))
        if item.image is not None:
            width, height = image_size(item.image, item_id=item.id)
            try:
                tokens += self.num_image_tokens(width, height) - 1  # the one <|image_pad|> expanded
            except (ValueError, ArithmeticError) as exc:
                raise ItemError(item.id, f"image of {width}x{height} cannot be embedded: {exc}") from None
        if tokens > self.max_length:
            raise ItemError(item.id, f"{tokens} tokens, over max_length={self.max_length}")
        return tokens

    def prepare(self, item: Item) -> ProcessedItem:
        """Token ids (image tokens expanded), their M-RoPE positions and the patches of one item."""
        ids = list(self.prompt_ids(self.prompt(item)))
        pads = [i for i, token in enumerate(ids) if token == self.image_token_id]
        if len(pads) != (1 if item.image is not None else 0):
            raise ItemError(item.id, f"text must not contain the special token {IMAGE_PAD}")
        if item.image is None:
            if len(ids) > self.max_length:
                raise ItemError(item.id, f"{len(ids)} tokens, over max_length={self.max_length}")
            return ProcessedItem(input_ids=ids, positions=np.tile(np.arange(len(ids)), (3, 1)))
        image = load_rgb(item.image, item_id=item.id)
        try:
            pixels = self.resize(image)
        except (ValueError, ArithmeticError) as exc:
            raise ItemError(item.id, f"image of {image.width}x{image.height} cannot be embedded: {exc}") from None
        pixel_values, grid = self.cut_patches(pixels)
        rows, columns = grid[1] // self.merge_size, grid[2] // self.merge_size
        at = pads[0]
        ids = ids[:at] + [self.image_token_id] * (rows * columns) + ids[at + 1:]
        if len(ids) > self.max_length:
            raise ItemError(item.id, f"{len(ids)} tokens, over max_length={self.max_length}")
        return ProcessedItem(input_ids=ids, positions=image_positions(at, rows, columns, len(ids)),
                             pixel_values=pixel_values, grid_thw=grid)

    def collate(self, prepared: Sequence[ProcessedItem]) -> dict[str, Any]:
        """The sequences back to back with their ``lengths`` and M-RoPE ``positions`` (the
        decoder packs them), and the images' patches and grids when the batch has any."""
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([t for p in prepared for t in p.input_ids], dtype=torch.long),
            "lengths": [len(p.input_ids) for p in prepared],
            "positions": torch.from_numpy(np.concatenate([p.positions for p in prepared], axis=1))}
        with_image = [p for p in prepared if p.pixel_values is not None]
        if with_image:
            batch["pixel_values"] = torch.from_numpy(np.concatenate([p.pixel_values for p in with_image]))
            batch["image_grid_thw"] = torch.tensor([p.grid_thw for p in with_image], dtype=torch.long)
        return batch


def image_positions(start: int, rows: int, columns: int, length: int) -> np.ndarray:
    """M-RoPE positions ``(3, length)`` of a sequence whose image tokens (``rows x columns``, row
    by row) begin at ``start``: text before at ``0..start-1`` on all three axes, the image at
    ``(start, start + row, start + column)``, the text after it from ``start + max(rows, columns)``."""
    positions = np.empty((3, length), dtype=np.int64)
    positions[:, :start] = np.arange(start)
    end = start + rows * columns
    positions[0, start:end] = start
    positions[1, start:end] = start + np.repeat(np.arange(rows), columns)
    positions[2, start:end] = start + np.tile(np.arange(columns), rows)
    positions[:, end:] = start + max(rows, columns) + np.arange(length - end)
    return positions
