"""Reference-style loops for the Qwen-VL embedders (GME, Qwen3-VL-Embedding): the authors'
inference code followed literally, one item at a time, on transformers' own processors and
modules. Their own scripts cannot be run as shipped here: GME's ``gme_inference.py`` loads in
float16 through an auto class transformers 5 removed, and Qwen3-VL-Embedding's needs
qwen-vl-utils and torchvision; these loops compute what those scripts compute."""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.items import Item
from .base import Reference

GME_DEFAULT_INSTRUCTION = "You are a helpful assistant."
QWEN3VL_DEFAULT_INSTRUCTION = "Represent the user's input."


def smart_resize(height: int, width: int, *, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils' ``smart_resize``: the nearest multiples of ``factor`` within the pixel bounds."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / scale / factor) * factor, math.floor(width / scale / factor) * factor
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * scale / factor) * factor, math.ceil(width * scale / factor) * factor
    return h, w


def _open(image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.open(str(image))


def qwen_vl_utils_fetch_image(image, *, factor: int, min_pixels: int, max_pixels: int) -> Image.Image:
    """qwen-vl-utils 0.0.14's ``fetch_image``: RGBA pasted on white, other modes ``convert("RGB")``,
    an aspect ratio over 200 refused, :func:`smart_resize`, PIL's default filter."""
    image = _open(image)
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        image = white
    else:
        image = image.convert("RGB")
    if max(image.height, image.width) / min(image.height, image.width) > 200:
        raise ValueError("absolute aspect ratio must be smaller than 200")
    h, w = smart_resize(image.height, image.width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return image.resize((w, h))


def _image_only(processor_class, **parts):
    """``processor_class`` without its video processor (which needs torchvision)."""

    class ImageOnlyProcessor(processor_class):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    return ImageOnlyProcessor(**parts)


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """The last attended position's state, L2-normalised (both references pool so)."""
    col = mask.shape[1] - mask.flip(dims=[1]).argmax(dim=1) - 1
    vector = hidden[torch.arange(hidden.shape[0]), col].float()
    return torch.nn.functional.normalize(vector, p=2, dim=-1)[0].cpu().numpy()


class GmeReference(Reference):
    """GME's ``gme_inference.py``: the message string, ``fetch_image`` (RGB, smart resize with
    factor 28 and PIL's default filter), the Qwen2-VL processor with right padding and
    ``truncation=True``, the token embeddings, the vision tower and the decoder called as it
    calls them (``position_ids=None``), the last token."""

    def __init__(self, folder: Path, *, min_image_tokens: int = 256, max_image_tokens: int = 1280,
                 max_length: int = 1800, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import transformers
        from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen2_vl.processing_qwen2_vl import Qwen2VLProcessor

        folder = Path(folder)
        self.base = Qwen2VLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        tokenizer.padding_side = "right"
        config = json.loads((folder / "preprocessor_config.json").read_text())
        self.min_pixels, self.max_pixels = min_image_tokens * 28 * 28, max_image_tokens * 28 * 28
        image_processor = Qwen2VLImageProcessorPil(min_pixels=self.min_pixels, max_pixels=self.max_pixels,
                                                   image_mean=config["image_mean"], image_std=config["image_std"])
        self.processor = _image_only(Qwen2VLProcessor, image_processor=image_processor, tokenizer=tokenizer)
        self.max_length, self.device = max_length, device
        self.description = (f"umr's GME reference loop (gme_inference.py followed literally), "
                            f"transformers {transformers.__version__}")

    @staticmethod
    def fetch_image(image) -> Image.Image:
        image = _open(image).convert("RGB")
        h, w = smart_resize(image.height, image.width, factor=28, min_pixels=4 * 28 * 28,
                            max_pixels=16384 * 28 * 28)
        if max(h, w) / min(h, w) > 200:
            h, w = (w * 200, w) if h > w else (h, h * 200)
        return image.resize((w, h))

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        instruction = item.instruction if item.is_query and item.instruction is not None else GME_DEFAULT_INSTRUCTION
        user, images = "", None
        if item.image is not None:
            user += "<|vision_start|><|image_pad|><|vision_end|>"
            images = [self.fetch_image(item.image)]
        if item.text is not None:
            user += item.text
        message = (f"<|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                   f"<|im_start|>assistant\n<|endoftext|>")
        inputs = self.processor(text=[message], images=images, padding=True, truncation=True,
                                max_length=self.max_length, return_tensors="pt").to(self.device)
        model = self.base.model
        embeds = model.language_model.embed_tokens(inputs["input_ids"])
        if images is not None:
            pixels = inputs["pixel_values"].type(model.visual.dtype)
            image_embeds = model.visual(pixels, grid_thw=inputs["image_grid_thw"]).pooler_output
            embeds[inputs["input_ids"] == self.base.config.image_token_id] = image_embeds.to(embeds.dtype)
        out = model.language_model(input_ids=None, position_ids=None, attention_mask=inputs["attention_mask"],
                                   inputs_embeds=embeds).last_hidden_state
        return _last_token(out, inputs["attention_mask"])


class Qwen3VLReference(Reference):
    """``Qwen3VLEmbedder`` (QwenLM/Qwen3-VL-Embedding): its conversation (instruction stripped,
    ``.`` appended unless it ends in punctuation, else the default; image before text),
    ``fetch_image`` as qwen-vl-utils 0.0.14 does it (RGBA pasted on white, other modes
    ``convert("RGB")``, smart resize with factor 32), transformers' ``Qwen3VLProcessor`` with
    the chat template and right padding, ``Qwen3VLModel`` and the last attended token."""

    def __init__(self, folder: Path, *, min_pixels: int = 4 * 32 * 32, max_pixels: int = 1800 * 32 * 32,
                 max_length: int = 8192, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import transformers
        from transformers import AutoModel, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        folder = Path(folder)
        self.model = AutoModel.from_pretrained(str(folder), dtype=dtype).to(device).eval()  # Qwen3VLModel
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        tokenizer.padding_side = "right"
        config = json.loads((folder / "preprocessor_config.json").read_text())
        image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                   image_mean=config["image_mean"], image_std=config["image_std"])
        self.processor = _image_only(Qwen3VLProcessor, image_processor=image_processor, tokenizer=tokenizer,
                                     chat_template=(folder / "chat_template.jinja").read_text())
        self.min_pixels, self.max_pixels, self.max_length, self.device = min_pixels, max_pixels, max_length, device
        self.description = (f"umr's Qwen3-VL-Embedding reference loop (Qwen3VLEmbedder followed literally), "
                            f"transformers {transformers.__version__}")

    def fetch_image(self, image) -> Image.Image:
        return qwen_vl_utils_fetch_image(image, factor=32, min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def conversation(self, item: Item) -> list[dict]:
        instruction = (item.instruction or "").strip() if item.is_query else ""
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
        content = []
        if item.image is not None:
            content.append({"type": "image", "image": item.image})
        if item.text is not None:
            content.append({"type": "text", "text": item.text})
        return [{"role": "system", "content": [{"type": "text", "text": instruction or QWEN3VL_DEFAULT_INSTRUCTION}]},
                {"role": "user", "content": content}]

    @torch.no_grad()
    def embed(self, item: Item) -> np.ndarray:
        prompt = self.processor.apply_chat_template([self.conversation(item)], add_generation_prompt=True,
                                                    tokenize=False)
        images = [self.fetch_image(item.image)] if item.image is not None else None
        # do_convert_rgb=False: the image is RGB already, converted as qwen-vl-utils converts it
        inputs = self.processor(text=prompt, images=images, truncation=True, max_length=self.max_length,
                                padding=True, do_resize=False, do_convert_rgb=False,
                                return_tensors="pt").to(self.device)
        hidden = self.model(**inputs).last_hidden_state
        return _last_token(hidden, inputs["attention_mask"])
