"""Qwen3-VL-Reranker's reference scorer: ``Qwen3VLReranker`` (QwenLM/Qwen3-VL-Embedding) followed
literally on transformers' own Qwen3-VL parts, one pair per forward pass. The authors' script
needs qwen-vl-utils and torchvision; this loop computes what it computes: the system turn and the
``<Instruct>`` / ``<Query>`` / ``<Document>`` user turn, ``fetch_image`` (qwen-vl-utils 0.0.14),
the processor without truncation, the cut that keeps every special token and the five closing
tokens, ``sigmoid(h · (w_yes − w_no))`` on the last token's hidden state."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...core.items import Item
from .qwen_vl import image_only_processor, qwen_vl_utils_fetch_image
from .rerank_base import RerankReference

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
#: the reference's ``MAX_LENGTH``
MAX_LENGTH = 10240


class Qwen3VLRerankerReference(RerankReference):
    """The reference reranker's steps, at its defaults unless given (the tests vary them)."""

    def __init__(self, folder: Path, *, max_length: int = MAX_LENGTH, min_pixels: int = 4 * 32 * 32,
                 max_pixels: int = 1800 * 32 * 32, device: str = "cpu", dtype: torch.dtype = torch.float32):
        import transformers
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        folder = Path(folder)
        lm = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        self.model = lm.model
        tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        config = json.loads((folder / "preprocessor_config.json").read_text())
        image_processor = Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                   image_mean=config["image_mean"], image_std=config["image_std"])
        self.processor = image_only_processor(Qwen3VLProcessor, image_processor=image_processor, tokenizer=tokenizer,
                                              chat_template=(folder / "chat_template.jinja").read_text())
        vocab = tokenizer.get_vocab()
        self.linear = torch.nn.Linear(lm.lm_head.weight.shape[1], 1, bias=False).to(device=device, dtype=dtype)
        with torch.no_grad():
            self.linear.weight[0] = lm.lm_head.weight[vocab["yes"]] - lm.lm_head.weight[vocab["no"]]
        self.window = max_length
        self.max_length, self.min_pixels, self.max_pixels, self.device = max_length, min_pixels, max_pixels, device
        self.description = (f"umr's Qwen3-VL-Reranker reference scorer (Qwen3VLReranker followed literally), "
                            f"transformers {transformers.__version__}")

    @staticmethod
    def side(text, image, prefix: str) -> list[dict]:
        content = [{"type": "text", "text": prefix}]
        if image is not None:
            content.append({"type": "image", "image": image})
        if text is not None:
            content.append({"type": "text", "text": text})
        return content

    def truncate(self, tokens: list[int], special) -> list[int]:
        """Above ``max_length``: every special token kept, ordinary ones cut from the end."""
        if len(tokens) <= self.max_length:
            return tokens
        keep = self.max_length - sum(t in special for t in tokens)
        out, n = [], 0
        for t in tokens:
            if t in special:
                out.append(t)
            elif n < keep:
                out.append(t)
                n += 1
        return out

    @torch.no_grad()
    def score(self, query: Item, document: Item) -> float:
        pair = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "<Instruct>: " + (query.instruction or DEFAULT_INSTRUCTION)},
                    *self.side(query.text, query.image, "<Query>:"),
                    *self.side(document.text, document.image, "\n<Document>:")]}]
        text = self.processor.apply_chat_template([pair], tokenize=False, add_generation_prompt=True)
        images = [qwen_vl_utils_fetch_image(x, factor=32, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
                  for x in (query.image, document.image) if x is not None]
        inputs = self.processor(text=text, images=images or None, truncation=False, padding=False,
                                do_resize=False, do_convert_rgb=False)
        special = self.processor.tokenizer.all_special_ids
        inputs["input_ids"] = [self.truncate(ids[:-5], special) + ids[-5:] for ids in inputs["input_ids"]]
        padded = self.processor.tokenizer.pad({"input_ids": inputs["input_ids"]}, padding=True, return_tensors="pt")
        model_inputs = dict(padded)
        if images:
            model_inputs["pixel_values"] = torch.as_tensor(np.asarray(inputs["pixel_values"]))
            model_inputs["image_grid_thw"] = torch.as_tensor(np.asarray(inputs["image_grid_thw"]))
            model_inputs["mm_token_type_ids"] = (padded["input_ids"] == self.model.config.image_token_id).int()
        model_inputs = {k: v.to(self.device) for k, v in model_inputs.items()}
        if "pixel_values" in model_inputs:
            model_inputs["pixel_values"] = model_inputs["pixel_values"].to(self.linear.weight.dtype)
        hidden = self.model(**model_inputs).last_hidden_state[:, -1]
        return float(torch.sigmoid(self.linear(hidden).float()).squeeze())
