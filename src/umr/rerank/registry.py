"""Short reranker names, reranker families, and the one public loader.

Folders and hub ids resolve exactly as for embedders (:func:`umr.models.registry.local_folder`).
A folder's family is read from its files: a sentence-transformers ``CrossEncoder`` (a
``*ForSequenceClassification`` text model), a Qwen3-VL-Reranker (a Qwen3-VL checkpoint whose
folder or hub name says ``reranker``), or any other generative multimodal LLM, used zero-shot.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..core.registry import ModelSpec, Registry
from ..models.registry import (ModelNotAvailable, declaration, declared_architectures, local_folder,
                               quiet_transformers, read_config, refuse_adapter)
from .base import Reranker

#: family name -> "module:Class"; each class has ``from_pretrained(path, **options)``
FAMILIES: dict[str, str] = {
    "qwen3-vl-reranker": "umr.rerank.qwen3vl:Qwen3VLReranker",
    "zero-shot": "umr.rerank.generative:GenerativeReranker",
    "cross-encoder": "umr.rerank.cross_encoder:CrossEncoderReranker",
}

#: the rerankers' short names and families (:class:`~umr.core.registry.Registry`, as for embedders)
RERANKER_REGISTRY = Registry("reranker", FAMILIES)
#: short name -> spec
RERANKERS: dict[str, ModelSpec] = RERANKER_REGISTRY.specs


def register(spec: ModelSpec) -> ModelSpec:
    """Add (or replace) a short name that :func:`load_reranker` loads."""
    return RERANKER_REGISTRY.register(spec)


register(ModelSpec("qwen3-vl-reranker-2b", "qwen3-vl-reranker", "Qwen/Qwen3-VL-Reranker-2B",
                   "Qwen3-VL-Reranker-2B: yes/no relevance of text, image and fused pairs"))
register(ModelSpec("qwen3-vl-reranker-8b", "qwen3-vl-reranker", "Qwen/Qwen3-VL-Reranker-8B",
                   "Qwen3-VL-Reranker-8B (MMEB-V2 retrieval 79.2)"))
register(ModelSpec("llava-next-mistral-7b", "zero-shot", "llava-hf/llava-v1.6-mistral-7b-hf",
                   "LLaVA-NeXT (Mistral-7B) zero-shot True/False reranking, as MM-Embed reranks"))
register(ModelSpec("qwen2-vl-2b-instruct", "zero-shot", "Qwen/Qwen2-VL-2B-Instruct",
                   "Qwen2-VL-2B-Instruct zero-shot True/False reranking"))
register(ModelSpec("qwen2.5-vl-3b-instruct", "zero-shot", "Qwen/Qwen2.5-VL-3B-Instruct",
                   "Qwen2.5-VL-3B-Instruct zero-shot True/False reranking"))
register(ModelSpec("qwen3-vl-2b-instruct", "zero-shot", "Qwen/Qwen3-VL-2B-Instruct",
                   "Qwen3-VL-2B-Instruct zero-shot True/False reranking"))
register(ModelSpec("ms-marco-minilm", "cross-encoder", "cross-encoder/ms-marco-MiniLM-L6-v2",
                   "MS MARCO MiniLM-L6 text cross-encoder"))


def load_reranker(model: str | os.PathLike, *, family: str | None = None, device: str = "cpu",
                  dtype: str | None = None, **options: Any) -> Reranker:
    """Load a reranker by short name, hub id or local folder.

    ``family`` (``qwen3-vl-reranker``, ``zero-shot``, ``cross-encoder``) overrides detection;
    ``options`` go to the family's loader (image token bounds, ``max_length``, prompts, ...).
    """
    resolved = RERANKER_REGISTRY.resolve(str(model), options, dtype=dtype, family=family, locate=_adapter_refused,
                                         detect=lambda folder, source: detect_family(folder, name=source))
    reranker = RERANKER_REGISTRY.instantiate(resolved, device=device, quiet=quiet_transformers)
    reranker.family, reranker.folder = resolved.family, resolved.folder
    return reranker


def _adapter_refused(source: str, *, shown_as: str) -> Path:
    """The local folder of ``source``; a PEFT adapter folder is refused before its family is read."""
    folder = local_folder(source, shown_as=shown_as)
    refuse_adapter(folder)
    return folder


def detect_family(folder: Path, *, name: str | None = None) -> str:
    """Which family reranks with this folder (see the module doc), from its declared architecture."""
    config = read_config(folder)
    architectures = declared_architectures(config)
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "cross-encoder"
    if config.get("model_type") == "qwen3_vl" and "reranker" in f"{name or ''} {folder.name}".lower():
        return "qwen3-vl-reranker"
    if any(a.endswith(("ForConditionalGeneration", "ForCausalLM", "ForImageTextToText")) for a in architectures):
        return "zero-shot"
    if config:
        raise ModelNotAvailable(f"{folder}: {declaration(config)} is neither a cross-encoder nor a generative "
                                f"model umr can rerank with")
    raise ModelNotAvailable(f"{folder}: no config.json: not a model folder")


def reranker_key(reranker: Reranker) -> str:
    """The reranker's name with its score-changing options: it keys cached rerank scores, so the
    same model loaded differently never reuses the other's scores."""
    options = json.dumps(reranker.options(), sort_keys=True, default=str)
    return f"{reranker.name}-{hashlib.sha1(options.encode()).hexdigest()[:8]}"


def list_rerankers() -> list[ModelSpec]:
    """The short reranker names, in the order they were registered."""
    return RERANKER_REGISTRY.list()
