"""Generative models for synthesis: a small :class:`Generator` contract and its transformers implementation.

The pipeline only needs "chat prompts in, replies out" (batched, seeded); anything that keeps
that contract (a hosted model, a test double) can stand in for :class:`HFGenerator`.
The loader here (:func:`load_generator`) is the one place umr loads a generative LLM/MLLM for
synthesis; it should be shared with the reranker's loader when both exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

#: a chat: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``
Chat = list[dict[str, str]]


@runtime_checkable
class Generator(Protocol):
    """Writes one reply per chat. ``name`` and ``decoding`` identify its replies in caches and provenance."""

    name: str
    decoding: "Decoding"

    def generate(self, chats: Sequence[Chat], *, seed: int) -> list[str]: ...


@dataclass(frozen=True)
class Decoding:
    """How replies are decoded: greedy (``temperature`` 0) or sampled, at most ``max_new_tokens``."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def key(self) -> str:
        return f"{self.max_new_tokens}/{self.temperature}/{self.top_p}"


class HFGenerator:
    """A transformers causal LM or image-text-to-text model with its own processor and chat template.

    ``logits_processors`` (a factory, called once per ``generate``) adds processors to decoding;
    tests use it to script replies through the logits of a tiny random model.
    """

    def __init__(self, model, processor, *, name: str, decoding: Decoding = Decoding(),
                 logits_processors: Callable[[], list] | None = None):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # replies start right after every prompt
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name
        self.decoding = decoding
        self.logits_processors = logits_processors

    def prompt_text(self, chat: Chat) -> str:
        return self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)

    def generate(self, chats: Sequence[Chat], *, seed: int) -> list[str]:
        import torch
        from transformers import LogitsProcessorList

        texts = [self.prompt_text(chat) for chat in chats]
        if self.processor is self.tokenizer:
            inputs = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        else:
            inputs = self.processor(text=texts, padding=True, return_tensors="pt")
        inputs = {k: v.to(self.model.device) for k, v in inputs.items()}
        options = dict(max_new_tokens=self.decoding.max_new_tokens, do_sample=self.decoding.sampled,
                       pad_token_id=self.tokenizer.pad_token_id)
        if self.decoding.sampled:
            options.update(temperature=self.decoding.temperature, top_p=self.decoding.top_p)
        else:
            options.update(temperature=None, top_p=None, top_k=None)
        if self.logits_processors is not None:
            options["logits_processor"] = LogitsProcessorList(self.logits_processors())
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**inputs, **options)
        new = out[:, inputs["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in new]


def load_generator(model: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None,
                   decoding: Decoding = Decoding()) -> HFGenerator:
    """Load a generative LLM (``AutoModelForCausalLM``) or MLLM (``AutoModelForImageTextToText``)
    from a local folder, with its processor; the model must ship a chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, \
        AutoTokenizer

    folder = Path(model)
    if not folder.is_dir():
        raise FileNotFoundError(f"generator {model}: no such folder (generators load from a local checkpoint)")
    config = AutoConfig.from_pretrained(folder)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, None: "auto"}[dtype]
    if getattr(config, "vision_config", None) is not None:
        net = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype)
        processor = AutoProcessor.from_pretrained(folder)
    else:
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        processor = AutoTokenizer.from_pretrained(folder)
    tokenizer = getattr(processor, "tokenizer", processor)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"generator {model}: its tokenizer has no chat template")
    return HFGenerator(net.to(device), processor, name=str(folder.resolve()), decoding=decoding)


def parse_reply(reply: str, fields: Sequence[str]) -> dict[str, str] | None:
    """The first JSON object in ``reply`` with a non-empty string for every field, or None.

    Models often wrap JSON in prose or code fences, so the object is searched for, not required
    to be the whole reply.
    """
    decoder = json.JSONDecoder()
    start = reply.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(reply, start)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and all(isinstance(value.get(f), str) and value[f].strip() for f in fields):
            return {f: value[f].strip() for f in fields}
        start = reply.find("{", start + 1)
    return None


def content_key(*parts: object) -> str:
    """A stable key for cached work: the hash of everything the result depends on."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
