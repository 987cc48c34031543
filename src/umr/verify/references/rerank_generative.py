"""The zero-shot generative reranker's reference: one plain ``model(**inputs).logits`` call per
pair on the model's own processor at its own defaults, the images handed over as they are
decoded (the processor converts their colour its own way), the question of the pair's
modalities from the documented default table, and the softmax of the two answer logits at the
last position. Nothing of umr's fast path is shared: no prompt builder, no text cut, no
left-padded batch, no image bounds."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from ...core.items import Item
from ...rerank.generative import ANSWERS, DEFAULT_PROMPTS, FALLBACK_PROMPT, load_processor
from .rerank_base import RerankReference


def _modality(item: Item) -> str:
    return ",".join(name for name, part in (("image", item.image), ("text", item.text)) if part is not None)


def open_image(image) -> Image.Image:
    """An item's image as PIL opens it, in its own mode."""
    if isinstance(image, Image.Image):
        return image
    return Image.open(io.BytesIO(image) if isinstance(image, bytes) else str(image))


class GenerativeRerankerReference(RerankReference):
    """P(True) / (P(True) + P(False)) of the next token after the question, as a user of the
    model would compute it by hand; ``prompts`` replace questions of the default table by the
    pair's modalities (``text->image``)."""

    def __init__(self, folder: Path, *, prompts: dict[str, str] | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        import transformers
        from transformers import AutoModelForImageTextToText

        folder = Path(folder)
        self.processor = load_processor(folder)
        self.model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype).to(device).eval()
        vocab = self.processor.tokenizer.get_vocab()
        self.answer_ids = [vocab[word] for word in ANSWERS]
        self.prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
        self.device = device
        self.description = (f"a plain model(**inputs).logits yes/no computation on the model's own processor, "
                            f"transformers {transformers.__version__}")

    @torch.no_grad()
    def score(self, query: Item, document: Item) -> float:
        content, images = [], []
        for item, label in ((query, "Query"), (document, "Candidate")):
            if item.image is not None:
                content.append({"type": "image"})
                images.append(open_image(item.image))
            if item.text is not None:
                content.append({"type": "text", "text": f"{label}: {item.text}\n"})
        question = self.prompts.get(f"{_modality(query)}->{_modality(document)}", FALLBACK_PROMPT)
        content.append({"type": "text", "text": question})
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                  add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images or None, return_tensors="pt").to(self.device)
        logits = self.model(**inputs).logits[0, -1, self.answer_ids].float()
        return float(torch.softmax(logits, dim=-1)[0])
