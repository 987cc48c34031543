"""Zero-shot reranking with any generative multimodal LLM, as MM-Embed reranks its top candidates.

Each pair becomes one user turn — the query (its image, then ``Query: text``), the candidate (its
image, then ``Candidate: text``) and a True/False question suited to the task — rendered with the
model's own chat template and generation prompt, its images prepared by the model's own processor.
The score is P(True) / (P(True) + P(False)) from the next-token logits: a softmax over the two
answer tokens. Questions are looked up by the pair's task name, then by its modalities
(``text->image``, ``image,text->image``, ...), then :data:`FALLBACK_PROMPT`; pass ``prompts`` to
change any of them.

Works with the checkpoints transformers loads with ``AutoModelForImageTextToText`` and a chat
template (LLaVA-NeXT, Qwen2-VL/Qwen2.5-VL/Qwen3-VL-Instruct). Pairs are left-padded into batches.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..core.devices import resolve_dtype
from ..core.images import decode_image, image_size
from ..core.items import Item, ItemError
from ..models.qwen3vl.processing_qwen3vl import read_chat_template
from ..models.qwen_vl_patches import smart_resize
from ..models.registry import ModelNotAvailable
from .base import Pair, Reranker

#: M-BEIR's task kinds (query modality -> candidate modality) and the question each asks
DEFAULT_PROMPTS: dict[str, str] = {
    "text->image": "Does the above daily-life image match the caption? True or False",
    "text->text": "Does the above candidate text answer the query? True or False",
    "text->image,text": "Does the above image and its text match the query? True or False",
    "image->text": "Does the above candidate text describe the query image? True or False",
    "image->image": "Do the two images above show the same thing? True or False",
    "image->image,text": "Does the above candidate (image and text) match the query image? True or False",
    "image,text->text": "Does the above candidate text answer the question about the query image? True or False",
    "image,text->image": ("Does the above candidate image match the query image modified as the query text "
                          "describes? True or False"),
    "image,text->image,text": "Does the above candidate match the query image and text? True or False",
}
FALLBACK_PROMPT = "Does the above candidate match the query? True or False"
ANSWERS = ("True", "False")
#: a rough image cost for batch planning when the processor's resizing is not Qwen's
_TOKENS_PER_IMAGE = 1200


def pair_content(pair: Pair, question: str, *, text_limit=None) -> tuple[list[dict], list]:
    """The user turn's content parts and the images they show, in order."""
    content: list[dict] = []
    images: list = []
    for item, label in ((pair.query, "Query"), (pair.candidate, "Candidate")):
        if item.image is not None:
            content.append({"type": "image"})
            images.append(item)
        if item.text is not None:
            text = text_limit(item.text) if text_limit else item.text
            content.append({"type": "text", "text": f"{label}: {text}\n"})
    content.append({"type": "text", "text": question})
    return content, images


class GenerativeReranker(Reranker):
    """P(True) of a generative MLLM asked whether the candidate matches the query."""

    batch_size = 4
    cost_budget = 8192

    def __init__(self, model, processor, *, prompts: dict[str, str] | None = None, answers=ANSWERS,
                 max_length: int | None = None, name: str = "zero-shot", device: str = "cpu"):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.tokenizer.padding_side = "left"
        self.prompts = {**DEFAULT_PROMPTS, **(prompts or {})}
        self.answers = tuple(answers)
        self.answer_ids = [answer_token_id(self.tokenizer, word) for word in self.answers]
        self.max_length = max_length
        self.name = name
        self.device = torch.device(device)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        prompts: dict[str, str] | str | Path | None = None, answers=ANSWERS,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int | None = None) -> "GenerativeReranker":
        """Load a generative MLLM folder. ``prompts``: task name or ``qmod->cmod`` -> question (a
        dict, or a JSON file of one); image token bounds for processors that take them (Qwen-VL);
        ``max_length`` cuts the query's and the candidate's texts to that many tokens each."""
        from transformers import AutoModelForImageTextToText

        folder = Path(path)
        if isinstance(prompts, (str, Path)):
            prompts = json.loads(Path(prompts).read_text(encoding="utf-8"))
        if prompts is not None and not (isinstance(prompts, dict)
                                        and all(isinstance(v, str) for v in prompts.values())):
            raise ValueError("prompts must map task names or 'qmod->cmod' keys to question strings")
        if max_length is not None and int(max_length) < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}")
        torch_dtype = resolve_dtype(dtype, default=torch.bfloat16 if str(device).startswith("cuda")
                                    else torch.float32)
        processor = load_processor(folder)
        if min_image_tokens is not None or max_image_tokens is not None:
            set_image_bounds(processor.image_processor, min_image_tokens, max_image_tokens)
        try:
            model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch_dtype, local_files_only=True)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotAvailable(f"{folder}: cannot load a generative model: {first}") from None
        model.to(device).eval()
        return cls(model, processor, prompts=prompts, answers=answers, max_length=max_length,
                   name=folder.name, device=device)

    def options(self) -> dict:
        size = getattr(self.processor.image_processor, "size", None)
        return {"dtype": str(self.model.dtype).replace("torch.", ""), "prompts": self.prompts,
                "answers": list(self.answers), "max_length": self.max_length,
                "image_size": {k: v for k, v in dict(size or {}).items() if v is not None}}

    def question(self, pair: Pair) -> str:
        """The question for a pair: by its task name, then by its modalities, then the fallback."""
        if pair.task and pair.task in self.prompts:
            return self.prompts[pair.task]
        return self.prompts.get(f"{pair.query.modality}->{pair.candidate.modality}", FALLBACK_PROMPT)

    def messages(self, pair: Pair) -> tuple[list[dict], list[Item]]:
        content, owners = pair_content(pair, self.question(pair), text_limit=self._cut_text)
        return [{"role": "user", "content": content}], owners

    def prompt(self, pair: Pair) -> tuple[str, list[Item]]:
        """The rendered prompt (the model's chat template and generation prompt) and its images' items."""
        messages, owners = self.messages(pair)
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, owners

    # -- the Reranker hooks ----------------------------------------------------------------------

    def _cost(self, pair: Pair) -> int:
        text, owners = self.prompt(pair)
        tokens = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return tokens + sum(self._image_tokens(item) for item in owners)

    def _score_batch(self, pairs: list[Pair]) -> torch.Tensor:
        prepared = self._each_pair(pairs, self._prepare)
        texts = [text for text, _ in prepared]
        images = [image for _, imgs in prepared for image in imgs]
        inputs = self.processor(text=texts, images=images or None, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        logits = self.model(**inputs, use_cache=False).logits[:, -1]
        return torch.softmax(logits[:, self.answer_ids].float(), dim=-1)[:, 0]

    def _prepare(self, pair: Pair):
        text, owners = self.prompt(pair)
        return text, [processor_rgb(decode_image(item.image, item_id=item.id)) for item in owners]

    # -- helpers ---------------------------------------------------------------------------------

    def _cut_text(self, text: str) -> str:
        if self.max_length is None:
            return text
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= self.max_length else self.tokenizer.decode(ids[: self.max_length])

    def _image_tokens(self, item: Item) -> int:
        """The image's tokens as the processor will resize it (Qwen-VL), else a rough estimate."""
        width, height = image_size(item.image, item_id=item.id)
        image_processor = self.processor.image_processor
        patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
        size = getattr(image_processor, "size", None) or {}
        if not (patch and merge and size.get("shortest_edge") and size.get("longest_edge")):
            return _TOKENS_PER_IMAGE
        factor = patch * merge
        try:
            h, w = smart_resize(height, width, factor=factor, min_pixels=size["shortest_edge"],
                                max_pixels=size["longest_edge"], floor_at_factor=False)
        except ValueError as exc:
            raise ItemError(item.id, f"image of {width}x{height} cannot be used: {exc}") from None
        return (h // factor) * (w // factor)


def processor_rgb(image: Image.Image) -> Image.Image:
    """RGB as transformers' image processors make it (``convert_to_rgb``): transparency (an alpha
    band, a transparent palette colour) composited on white, other modes converted. PIL's own
    ``convert("RGB")`` drops the alpha and shows what lies under it (``umr verify`` found this)."""
    from transformers.image_transforms import convert_to_rgb

    return Image.fromarray(convert_to_rgb(image, return_numpy=True))


def answer_token_id(tokenizer, word: str) -> int:
    """The one token ``word`` is as the first word of an answer; refuses a word split in several."""
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ModelNotAvailable(f"the answer {word!r} is {len(ids)} tokens in this tokenizer, not one; "
                                f"pass answers=(yes_word, no_word) that are single tokens")
    return int(ids[0])


def set_image_bounds(image_processor, min_image_tokens: int | None, max_image_tokens: int | None) -> None:
    """Qwen-VL image processors: the fewest / most merged tokens per image."""
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    size = getattr(image_processor, "size", None)
    if not (patch and merge and size is not None and size.get("shortest_edge")):
        raise ValueError(f"{type(image_processor).__name__} has no image-token bounds: --min-image-tokens and "
                         f"--max-image-tokens apply to Qwen-VL processors")
    factor = (patch * merge) ** 2
    low = int(min_image_tokens) * factor if min_image_tokens is not None else size["shortest_edge"]
    high = int(max_image_tokens) * factor if max_image_tokens is not None else size["longest_edge"]
    if min_image_tokens is not None and max_image_tokens is None:
        high = max(high, low)
    if max_image_tokens is not None and min_image_tokens is None:
        low = min(low, high)
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= min_image_tokens <= max_image_tokens, got {min_image_tokens} "
                         f"and {max_image_tokens}")
    image_processor.size = {"shortest_edge": low, "longest_edge": high}


def load_processor(folder: Path):
    """The model's own processor; without torchvision (no video processor) the same processor
    class built from its image processor and tokenizer alone."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(folder), local_files_only=True)
    except ImportError:
        pass
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    config_file = folder / "preprocessor_config.json"
    config: dict[str, Any] = json.loads(config_file.read_text()) if config_file.is_file() else {}
    base = getattr(transformers, config.get("processor_class", ""), None)
    if base is None:
        raise ModelNotAvailable(f"{folder}: cannot build its processor (no processor_class in preprocessor_config.json)")

    class ImageOnlyProcessor(base):
        @classmethod
        def get_attributes(cls):
            return ["image_processor", "tokenizer"]

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return ImageOnlyProcessor(image_processor=AutoImageProcessor.from_pretrained(str(folder), local_files_only=True),
                              tokenizer=tokenizer, chat_template=read_chat_template(folder, tokenizer))
