"""Texts and images as UniIR's CLIP-SF sees them.

UniIR (``src/data/mbeir_dataset.py``) builds a query's text as
``format_string(f"{instruction} {query_txt}")`` and a candidate's as ``format_string(txt)``,
where ``format_string`` strips the text (and ``\\r`` and surrounding double quotes),
capitalises its first character and ends it with a period unless it already ends in
``.``, ``?`` or ``!``. An empty text is "no text" (its embedding is masked out), so an
image-only query *with* an instruction becomes image + instruction text. UniIR then tokenises
with OpenAI's ``clip.tokenize``, whose ``basic_clean`` / ``whitespace_clean`` unescape HTML
entities twice and collapse whitespace before BPE; transformers' CLIP tokenizer does not
unescape, so umr applies that cleaning itself (see :func:`openai_clip_clean`).

Images go through CLIP's own preprocessing: resize the short side to the input size
(bicubic), centre-crop, scale to [0, 1], normalise with CLIP's mean and std. SigLIP resizes
to a square instead. The numbers come from the folder's ``preprocessor_config.json`` when
it has one.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.images import image_size, load_image
from ...core.items import Item, ItemError
from ...core.uniir import format_string as uniir_format
from ..processing import Processor

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: a short-side resize larger than this (an aspect ratio over ~300 at 224 px) resamples only
#: the window the centre crop keeps (see :meth:`ImageTransform._resize_crop_window`)
MAX_RESIZED_PIXELS = 16 * 1024 * 1024


def openai_clip_clean(text: str) -> str:
    """The cleaning OpenAI's ``clip.tokenize`` does before BPE, minus ``ftfy.fix_text``.

    ``simple_tokenizer.basic_clean`` (``ftfy.fix_text``, ``html.unescape`` twice, strip) then
    ``whitespace_clean`` (runs of whitespace -> one space, strip), so ``"Tom &amp; Jerry"``
    reads ``"Tom & Jerry"``. ftfy is not a umr dependency and is left out: it only changes
    mojibake / badly encoded text (e.g. ``"cafÃ©"``), which is then tokenised as it stands.
    """
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def item_text(item: Item, *, uniir: bool = True) -> str:
    """The text an item contributes ("" = none). Query instructions are prefixed as UniIR does.

    With ``uniir`` the text is UniIR's ``format_string`` output cleaned as ``clip.tokenize``
    cleans it (:func:`openai_clip_clean`), in that order.
    """
    text = item.text or ""
    if item.is_query and item.instruction:
        text = f"{item.instruction} {text}"
    return openai_clip_clean(uniir_format(text)) if uniir else text.strip()


@dataclass
class ImageTransform:
    """Resize (short side, or to a square), centre-crop, normalise; all with PIL/numpy."""

    size: int = 224
    crop: int | None = 224
    square: bool = False
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN
    std: tuple[float, ...] = OPENAI_CLIP_STD
    resample: int = 3  # bicubic
    #: "round" centres crops like torchvision (OpenAI CLIP, UniIR); "floor" like transformers
    crop_rounding: str = "round"

    @classmethod
    def from_folder(cls, folder: Path, *, kind: str, image_size: int, crop_rounding: str = "floor") -> "ImageTransform":
        if kind == "siglip":
            base = cls(size=image_size, crop=None, square=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       crop_rounding=crop_rounding)
        else:
            base = cls(size=image_size, crop=image_size, crop_rounding=crop_rounding)
        pre = folder / "preprocessor_config.json"
        if not pre.is_file():
            return base
        cfg = json.loads(pre.read_text())
        size = cfg.get("size", {})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        if "shortest_edge" in size:
            base.size, base.square = int(size["shortest_edge"]), False
        elif "height" in size:
            base.size, base.square = int(size["height"]), True
        crop = cfg.get("crop_size")
        if isinstance(crop, dict):
            crop = crop.get("height")
        base.crop = int(crop) if cfg.get("do_center_crop", not base.square) and crop else None
        base.mean = tuple(cfg.get("image_mean", base.mean))
        base.std = tuple(cfg.get("image_std", base.std))
        base.resample = int(cfg.get("resample", base.resample))
        return base

    def __call__(self, image: Image.Image) -> torch.Tensor:
        resample = Image.Resampling(self.resample)
        if self.square:
            image = image.resize((self.size, self.size), resample=resample)
        else:
            w, h = image.size
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = self.size, int(self.size * long / short)
            new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
            if self.crop and new_w * new_h > MAX_RESIZED_PIXELS:
                return self._normalise(self._resize_crop_window(image, new_w, new_h, resample))
            if (new_w, new_h) != (w, h):
                image = image.resize((new_w, new_h), resample=resample)
        if self.crop:
            top, left = self._crop_origin(*image.size)
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return self._normalise(image)

    def _crop_origin(self, w: int, h: int) -> tuple[int, int]:
        if self.crop_rounding == "round":
            return int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
        return (h - self.crop) // 2, (w - self.crop) // 2

    def _resize_crop_window(self, image: Image.Image, new_w: int, new_h: int, resample) -> Image.Image:
        """The centre crop of ``image`` resized to ``new_w x new_h``, resampling only that window.

        For a very long, thin image (1 x 5000 resizes to 224 x 1.1M) the full resize would not
        fit in memory; PIL's ``box`` resamples the crop's source window at the same scale instead.
        """
        top, left = self._crop_origin(new_w, new_h)
        sx, sy = image.width / new_w, image.height / new_h
        box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
        return image.resize((self.crop, self.crop), resample=resample, box=box)

    def _normalise(self, image: Image.Image) -> torch.Tensor:
        arr = np.asarray(image, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class ClipSfProcessor(Processor[Item, "tuple[torch.Tensor | None, str]"]):
    """An item as the two towers see it: its preprocessed pixels and its (UniIR-formatted) text."""

    def __init__(self, tokenizer, transform: ImageTransform, *, kind: str, max_length: int = 77,
                 uniir_text: bool = True):
        self.tokenizer = tokenizer
        self.transform = transform
        self.kind = kind
        self.max_length = max_length
        self.uniir_text = uniir_text

    def text_of(self, item: Item) -> str:
        return item_text(item, uniir=self.uniir_text)

    def cost(self, item: Item) -> int:
        """1 per item (both towers take fixed-size inputs); a blank item or a missing or broken
        image (read from its header only) is refused before any model work."""
        if item.image is None and not self.text_of(item):
            raise ItemError(item.id, "has neither an image nor any text (blank text)")
        if item.image is not None:
            image_size(item.image, item_id=item.id)  # header only: refuse missing/broken files early
        return 1

    def prepare(self, item: Item) -> tuple[torch.Tensor | None, str]:
        """The item's preprocessed pixels (None without an image) and its (formatted) text."""
        pixels = None if item.image is None else self.transform(load_image(item.image, item_id=item.id))
        return pixels, self.text_of(item)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Token ids (and, for CLIP, the attention mask) of ``texts`` cut at ``max_length``: SigLIP
        is trained on ``max_length`` padding and pools the last position, CLIP pads to the longest."""
        if self.kind == "siglip":
            enc = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            return {"input_ids": enc["input_ids"]}
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def collate(self, prepared: Sequence[tuple[torch.Tensor | None, str]]) -> dict[str, Any]:
        """The rows with text (``text_rows``) and their tokens (``text``), the rows with an image
        (``image_rows``) and their pixels stacked (``pixel_values``); each tower runs on its rows."""
        image_rows = [i for i, (pixels, _) in enumerate(prepared) if pixels is not None]
        text_rows = [i for i, (_, text) in enumerate(prepared) if text]
        batch: dict[str, Any] = {"text_rows": text_rows, "image_rows": image_rows}
        if text_rows:
            batch["text"] = self.tokenize([prepared[i][1] for i in text_rows])
        if image_rows:
            batch["pixel_values"] = torch.stack([prepared[i][0] for i in image_rows])
        return batch
