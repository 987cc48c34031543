"""Plain text embedders: any sentence-transformers model, with the model's own prompts.

Vectors equal sentence-transformers' ``encode_query`` for queries and ``encode_document``
for candidates (normalised), so a model whose ``config_sentence_transformers.json`` carries
prompts (e5, bge, nomic, gte style: ``{"query": "query: ", "document": "passage: "}``) gets
them:

* a query uses the ``query`` prompt and a candidate the ``document`` prompt, "" when the
  model has none (sentence-transformers 6 always holds both names, so neither falls back to
  ``passage`` or ``default_prompt_name``); a model without prompts (minilm) embeds the bare
  text, i.e. plain ``encode``;
* a query's explicit instruction **replaces** its query prompt: the text embedded is
  ``"{instruction} {text}"`` (the convention of instruction-tuned text embedders).

An item with an image cannot be embedded by a text model and is reported as such.

The common layout (BERT -> mean/CLS/max pooling -> normalise) runs on a light path
(:mod:`.bert`) that gives sentence-transformers' vectors without importing it, so a one-query
``umr search`` starts in about a second; ``backend="sentence-transformers"`` forces the library.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch

from ...core.devices import cpu_default_dtype, resolve_dtype
from ...core.items import Item, ItemError
from ..base import Embedder, Trainable, tokenizer_spans
from ..registry import quiet_transformers
from .bert import BertSentenceEncoder, supports

Backend = Literal["auto", "light", "sentence-transformers"]


@dataclass(frozen=True)
class TextPrompts:
    """A sentence-transformers model's prompts, resolved as ``encode_query`` / ``encode_document`` do.

    ``default_prompt_name`` is kept for the record: it only applies to plain ``encode``.
    """

    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None

    @classmethod
    def from_folder(cls, folder: Path) -> "TextPrompts":
        file = folder / "config_sentence_transformers.json"
        config = json.loads(file.read_text()) if file.is_file() else {}
        prompts = {str(k): str(v) for k, v in (config.get("prompts") or {}).items()}
        default = config.get("default_prompt_name")
        return cls(prompts, default if default in prompts else None)

    @property
    def query(self) -> str:
        return self.prompts.get("query", "")

    @property
    def document(self) -> str:
        return self.prompts.get("document", "")


class TextBackend(Protocol):
    """What runs the network: sentence-transformers itself, or the light BERT path."""

    dim: int
    max_seq_length: int
    #: the dtype the network computes in (part of the vectors' identity)
    dtype: torch.dtype

    def count_tokens(self, text: str, prompt: str) -> int:
        """Tokens of ``prompt + text`` after truncation (the forward cost)."""

    def encode(self, texts: list[str], prompt: str) -> torch.Tensor:
        """Vectors of ``prompt + text`` for each text, as sentence-transformers computes them."""

    def special_tokens(self) -> int:
        """Tokens the tokenizer adds around one text ([CLS] and [SEP] for BERT)."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character offsets of ``text``'s tokens, special tokens left out."""


class SentenceTransformersBackend:
    """A loaded ``SentenceTransformer``; prompts passed as ``prompt=`` so pooling can leave them out."""

    def __init__(self, model):
        self.model = model
        self.dim = int(model.get_embedding_dimension())
        self.max_seq_length = int(model.max_seq_length)
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def load(cls, folder: Path, *, device: str = "cpu", dtype: str | None = None) -> "SentenceTransformersBackend":
        from sentence_transformers import SentenceTransformer

        with quiet_transformers():
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        if dtype is not None:
            model = model.to(resolve_dtype(dtype))
        return cls(model.eval())

    def count_tokens(self, text: str, prompt: str) -> int:
        return len(self.model.tokenizer(prompt + text, truncation=True, max_length=self.max_seq_length)["input_ids"])

    def encode(self, texts: list[str], prompt: str) -> torch.Tensor:
        # the forward ``encode`` runs, without its inference mode: fine-tuning (training_forward)
        # computes exactly what embedding computes
        from sentence_transformers.util import batch_to_device

        features = batch_to_device(self.model.preprocess(texts, prompt=prompt or None), self.model.device)
        return self.model(features)["sentence_embedding"]

    def special_tokens(self) -> int:
        return self.model.tokenizer.num_special_tokens_to_add(pair=False)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.model.tokenizer, text)


class LightBertBackend:
    """:class:`~umr.models.text.bert.BertSentenceEncoder` with its ``tokenizers`` tokenizer.

    Texts are tokenised once: :meth:`count_tokens` (the cost estimate ``embed`` runs over every
    item first) keeps the ids it made, and :meth:`encode` takes them back instead of tokenising
    again.
    """

    #: at most this many texts' ids wait between their cost estimate and their forward
    TOKEN_MEMO = 1 << 16

    def __init__(self, folder: Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from tokenizers import Tokenizer

        self.encoder, self.tokenizer = BertSentenceEncoder.from_folder(folder, device=device, dtype=dtype)
        # spans are of the whole text (passages are cut from them); the forward's tokenizer truncates
        self.span_tokenizer = Tokenizer.from_str(self.tokenizer.to_str())
        self.span_tokenizer.no_truncation()
        self.dim = self.encoder.dim
        self.max_seq_length = self.encoder.max_seq_length
        self.dtype = dtype
        self.device = torch.device(device)
        self._ids: dict[str, list[int]] = {}

    def count_tokens(self, text: str, prompt: str) -> int:
        ids = self.tokenizer.encode(prompt + text).ids
        if len(self._ids) >= self.TOKEN_MEMO:  # costed but never encoded (a failed run): drop the oldest
            del self._ids[next(iter(self._ids))]
        self._ids[prompt + text] = ids
        return len(ids)

    def encode(self, texts: list[str], prompt: str) -> torch.Tensor:
        full = [prompt + text for text in texts]
        ids = [self._ids.pop(t, None) for t in full]
        missing = [i for i, found in enumerate(ids) if found is None]
        if missing:  # texts encoded without a cost estimate first (training_forward)
            for i, encoding in zip(missing, self.tokenizer.encode_batch([full[i] for i in missing])):
                ids[i] = encoding.ids
        lengths = torch.tensor([len(row) for row in ids])
        packed = torch.tensor([token for row in ids for token in row], dtype=torch.long)
        with _one_thread_if(self.device.type == "cpu" and len(packed) <= SMALL_BATCH_TOKENS):
            return self.encoder(packed.to(self.device), lengths.to(self.device))

    def special_tokens(self) -> int:
        return self.tokenizer.num_special_tokens_to_add(False)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        offsets = self.span_tokenizer.encode(text, add_special_tokens=False).offsets
        return [(int(a), int(b)) for a, b in offsets if b > a]


#: a CPU forward of at most this many tokens (a query or two) runs on one thread: its
#: matmuls are too small to split, and on a busy machine waiting for a second thread cost a
#: one-query search ~1 s against 0.04 s (measured with benchmarks/startup.py's machine load)
SMALL_BATCH_TOKENS = 64


@contextlib.contextmanager
def _one_thread_if(condition: bool):
    threads = torch.get_num_threads()
    if not condition or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TextEmbedder(Embedder, Trainable):
    batch_size = 32  # measured on CPU: 32 beats 64 (less padding per batch), see benchmarks/embed_throughput.py
    cost_budget = 32 * 256  # padded tokens per forward pass
    #: LoRA on the attention projections of BERT-, RoBERTa- and MPNet-style encoders
    lora_targets = r".*\.(query|key|value|q|k|v|q_proj|k_proj|v_proj)"
    #: the light path's bfloat16 GEMMs keep every benchmark vector within cosine 0.999 of float32
    #: (worst 0.99993, ``benchmarks/text_speed.py``); the sentence-transformers path stays float32
    bf16_close = True
    #: a text model sees an image only as its words (caption, OCR)
    sees_images = False

    def __init__(self, backend: TextBackend, *, prompts: TextPrompts | None = None, name: str | None = None,
                 folder: Path | None = None, device: str = "cpu", dtype: str | None = None):
        self.backend = backend
        self.prompts = prompts or TextPrompts()
        self.dim = backend.dim
        self.name = name or "text"
        #: where the model was loaded from, and how: training reloads it with sentence-transformers
        self.folder, self.device, self.dtype = folder, device, dtype

    def vector_options(self) -> dict:
        return {"dtype": str(self.backend.dtype).removeprefix("torch."),
                "max_length": int(self.backend.max_seq_length),
                "prompts": {"query": self.prompts.query, "document": self.prompts.document}}

    def text_window(self) -> int:
        """``max_seq_length`` less the tokenizer's special tokens ([CLS] and [SEP] for BERT)."""
        return int(self.backend.max_seq_length) - self.backend.special_tokens()

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return self.backend.token_spans(text)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        backend: Backend = "auto") -> "TextEmbedder":
        """Load a sentence-transformers folder.

        ``backend="auto"`` runs BERT + pooling folders on the light path and everything else
        with sentence-transformers; ``"light"`` insists on the former. The light path's default
        dtype is :func:`~umr.core.devices.cpu_default_dtype` on a CPU (bfloat16 where ``UMR_CPU_BF16``
        or the CPU's native bf16 says so) and float32 elsewhere; ``dtype="float32"`` forces exact vectors.
        """
        folder = Path(path)
        if backend not in ("auto", "light", "sentence-transformers"):
            raise ValueError(f"backend must be auto, light or sentence-transformers, not {backend!r}")
        light_dtype = resolve_dtype(dtype, default=cpu_default_dtype(bf16_close=cls.bf16_close)
                                    if str(device) == "cpu" else torch.float32)
        light = supports(folder) and light_dtype in (torch.float32, torch.bfloat16)
        if backend == "light" and not light:
            raise ValueError(f"{folder}: the light text path runs BERT + mean/CLS/max pooling folders in "
                             f"float32 or bfloat16 only; use backend='sentence-transformers'")
        if light and backend != "sentence-transformers":
            runner: TextBackend = LightBertBackend(folder, device=device, dtype=light_dtype)
        else:
            runner = SentenceTransformersBackend.load(folder, device=device, dtype=dtype)
        return cls(runner, prompts=TextPrompts.from_folder(folder), name=folder.name, folder=folder,
                   device=device, dtype=dtype)

    def prompt_of(self, item: Item) -> str:
        """The prompt put before the item's text (see the module docstring)."""
        if not item.is_query:
            return self.prompts.document
        if item.instruction:
            return f"{item.instruction} "
        return self.prompts.query

    def _text_of(self, item: Item) -> str:
        if item.image is not None:
            raise ItemError(item.id, f"{self.name} is a text model and cannot embed an image")
        return item.text or ""

    def _cost(self, item: Item) -> int:
        # the exact token count: batches sorted by it pad less, which more than pays for
        # tokenising twice (measured in benchmarks/embed_throughput.py)
        return self.backend.count_tokens(self._text_of(item), self.prompt_of(item))

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        texts = self._each_item(items, self._text_of)
        prompts = [self.prompt_of(item) for item in items]
        out = torch.empty(len(items), self.backend.dim)  # the full width: a Matryoshka cut comes later
        for prompt in dict.fromkeys(prompts):  # one forward per prompt (queries and documents may mix)
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            out[rows] = self.backend.encode([texts[i] for i in rows], prompt).float().cpu()
        return out

    # -- training (umr.train) ----------------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        """The sentence-transformers network (a model on the light path is reloaded with the
        library, which computes the same vectors and holds trainable modules)."""
        if not isinstance(self.backend, SentenceTransformersBackend):
            if self.folder is None:
                raise ValueError(f"{self.name}: no folder to load a trainable copy from")
            self.backend = SentenceTransformersBackend.load(self.folder, device=self.device, dtype=self.dtype)
        return self.backend.model

    def save_pretrained(self, folder: str | Path) -> None:
        self.trainable_module().save(str(folder))
