"""Short model names, model families, and the one public loader.

``load_model`` takes a short name (``gme-2b``), a hub id or a local folder and returns an
:class:`~umr.models.base.Embedder`. Families are imported lazily so that loading a text
model never imports the vision stacks.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable

# check_device and UnsupportedOption are also read from here (code written against umr before they moved)
from ..core.devices import check_device  # noqa: F401
from ..core.registry import ModelSpec, UnsupportedOption  # noqa: F401
from .base import Embedder
# FAMILIES, REGISTRY, list_models and register are also read from here (umr.models re-exports the catalog)
from .catalog import FAMILIES, MODELS, REGISTRY, list_models, register  # noqa: F401
from .identity import identify


class ModelNotAvailable(RuntimeError):
    """The weights cannot be had here; the message says how to point at a local copy."""


#: families whose loader applies a PEFT LoRA adapter to the base its ``adapter_config.json`` names
#: (the published ColQwen checkpoints are such adapters); any other adapter folder is refused
ADAPTER_FAMILIES = frozenset({"colqwen"})

#: A checkpoint's declared architecture (config.json ``architectures``) -> the family that embeds
#: it: the one table family detection reads. A checkpoint of any other architecture is refused
#: by name, never loaded as a related family (ColQwen2.5 declares ``model_type: qwen2_5_vl``
#: like a Qwen2.5-VL GME, but is a multi-vector ColPali model). Supporting an architecture is
#: one line here (and, for one listed in :data:`NOT_IMPLEMENTED`, removing it there).
ARCHITECTURES: dict[str, str] = {
    "Qwen2VLForConditionalGeneration": "gme",  # GME-2B/7B as released
    "Qwen2VLModel": "gme",  # a GME fine-tuned by umr train (saved without the language-model head)
    "Qwen2_5_VLForConditionalGeneration": "gme",  # the GME recipe on Qwen2.5-VL
    "Qwen2_5_VLModel": "gme",
    "Qwen3VLForConditionalGeneration": "qwen3vl",  # Qwen3-VL-Embedding-2B/8B
    "Qwen3VLModel": "qwen3vl",
    "NVMMEmbedModel": "mm-embed",  # nvidia/MM-Embed (model_type llava_next, custom code)
    "CLIPModel": "clip-sf",
    "SiglipModel": "clip-sf",
    "ColQwen2_5": "colqwen",  # vidore/colqwen2.5-base (model_type qwen2_5_vl, like a Qwen2.5-VL GME)
    "ColQwen2": "colqwen",  # vidore/colqwen2-base (model_type qwen2_vl, GME's own)
}

#: architectures umr knows of but does not implement, with what they are: named in the refusal
NOT_IMPLEMENTED: dict[str, str] = {
    "ColQwen2ForRetrieval": "ColPali family, multi-vector",
    "ColPali": "ColPali family, multi-vector",
    "ColPaliForRetrieval": "ColPali family, multi-vector",
    "ColIdefics3": "ColPali family, multi-vector",
    "LlavaNextForConditionalGeneration": "a generative LLaVA-NeXT (umr reranks with it), not MM-Embed",
}

#: config.json ``model_type`` -> family, for a config that declares no ``architectures`` at all
MODEL_TYPES: dict[str, str] = {
    "qwen2_vl": "gme",
    "qwen2_5_vl": "gme",
    "llava_next": "mm-embed",
    "clip": "clip-sf",
    "siglip": "clip-sf",
    "qwen3_vl": "qwen3vl",
}

def load_model(model: str | os.PathLike, *, device: str = "cpu", dtype: str | None = None,
               **options: Any) -> Embedder:
    """Load an embedder by short name, hub id or local folder.

    ``options`` go to the family's loader (e.g. ``min_image_tokens`` for GME); a short name's
    defaults apply first. ``dim=N`` (any family) keeps the first N dimensions of every vector,
    renormalised: the Matryoshka truncation models like Qwen3-VL-Embedding are trained for.
    Raises :class:`ModelNotAvailable` when the weights are nowhere to be found, with a
    one-line hint.
    """
    resolved = MODELS.resolve(str(model), options, dtype=dtype, locate=local_folder,
                              detect=lambda folder, source: detect_family(folder))
    dim = resolved.options.pop("dim", None)
    # text quiets transformers itself, only when it imports it (the light path does not)
    quiet = contextlib.nullcontext if resolved.family == "text" else quiet_transformers
    embedder = MODELS.instantiate(resolved, device=device, quiet=quiet)
    if dim is not None:
        if not isinstance(embedder, Embedder):
            raise UnsupportedOption(resolved.key, resolved.family, ["dim"], [])  # tokens are not Matryoshka-trained
        embedder.truncate_dim(int(dim))
        resolved.options["dim"] = int(dim)
    embedder.identity = identify(embedder, resolved.folder, name=resolved.key, family=resolved.family,
                                 load_options=resolved.options)
    return embedder


def model_folder(model: str | os.PathLike) -> Path:
    """The local folder :func:`load_model` reads for a short name, hub id or folder."""
    key = str(model)
    return local_folder(MODELS.source(key), shown_as=key)


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
    """Which family loads this folder, from what the checkpoint declares: its ``architectures``
    (:data:`ARCHITECTURES`; GME repositories also ship sentence-transformers files, so this comes
    first), else a sentence-transformers folder. An adapter is its base's (for a family in
    :data:`ADAPTER_FAMILIES`); any other adapter, an architecture umr does not implement and a
    sentence-transformers folder of another kind are refused in one line."""
    family = adapter_family(folder)
    if family is not None:
        return family
    config = read_config(folder)
    declared = declared_architectures(config)
    for architecture in declared:
        if architecture in ARCHITECTURES:
            return ARCHITECTURES[architecture]
    if not declared and config.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[config["model_type"]]
    if (folder / "modules.json").is_file() and not any(a in NOT_IMPLEMENTED for a in declared):
        _check_sentence_transformers(folder)
        return "text"
    if config:
        raise ModelNotAvailable(f"{folder}: {declaration(config)}: not one umr implements, so it is not "
                                f"loaded as another family; umr embeds {_known()}, or a sentence-transformers folder")
    raise ModelNotAvailable(f"{folder}: no config.json or modules.json: not a model folder")


def adapter_family(folder: Path) -> str | None:
    """None for a folder that is no PEFT adapter; for an adapter, the family of the base it names
    when that family applies adapters (:data:`ADAPTER_FAMILIES`; the base read from the folder's
    own config.json or a local copy of the base), else the adapter is refused (:func:`refuse_adapter`)."""
    if not (folder / "adapter_config.json").is_file():
        return None
    base = _adapter_base(folder)
    base_config = read_config(folder) or _local_base_config(base, beside=folder) or _hub_base_config(base)
    family = next((ARCHITECTURES[a] for a in declared_architectures(base_config) if a in ARCHITECTURES), None)
    if family in ADAPTER_FAMILIES:
        return family
    refuse_adapter(folder)
    return None


def read_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a model folder ({} when there is none; a broken one is a one-line error)."""
    file = folder / "config.json"
    if not file.is_file():
        return {}
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotAvailable(f"{folder}: config.json cannot be read ({exc})") from None
    if not isinstance(config, dict):
        raise ModelNotAvailable(f"{folder}: config.json is not a JSON object")
    return config


def refuse_adapter(folder: Path) -> None:
    """A PEFT adapter folder (``adapter_config.json``) is refused, naming its base and the base's
    architecture where a local copy tells it: its weights are deltas that mean nothing without
    the base, and loading a config beside them would silently drop the adapter."""
    file = folder / "adapter_config.json"
    if not file.is_file():
        return
    adapter = _read_adapter(folder)
    base = _adapter_base(folder) or "an unnamed base"
    kind = str(adapter.get("peft_type") or "PEFT")
    base_config = read_config(folder) or _local_base_config(base, beside=folder)
    on = f"{base} ({declaration(base_config)})" if base_config else base
    unknown = "" if base_config else " (its base is not on this machine to tell its architecture)"
    raise ModelNotAvailable(f"{folder}: a {kind} adapter (adapter_config.json) on {on}, not a complete "
                            f"checkpoint{unknown}; umr applies adapters on {', '.join(_adapter_architectures())} "
                            f"bases only: merge any other adapter into its base (peft's merge_and_unload) and "
                            f"pass the merged folder if umr implements its architecture")


def _adapter_architectures() -> list[str]:
    return [a for a, family in ARCHITECTURES.items() if family in ADAPTER_FAMILIES]


def _read_adapter(folder: Path) -> dict[str, Any]:
    """An adapter folder's ``adapter_config.json`` ({} when unreadable: the refusal still names the folder)."""
    try:
        adapter = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return adapter if isinstance(adapter, dict) else {}


def _adapter_base(folder: Path) -> str:
    """The base an adapter folder names (``base_model_name_or_path``; "" when it names none)."""
    return str(_read_adapter(folder).get("base_model_name_or_path") or "")


def _local_base_config(base: str, *, beside: Path) -> dict[str, Any]:
    """The config of an adapter's base when it is on this machine (a folder, absolute or relative to
    the adapter folder ``beside``, or the hub cache); never downloads."""
    if not base:
        return {}
    for path in (Path(base).expanduser(), beside / base):
        if path.is_dir():
            return read_config(path)
    if base.count("/") != 1:
        return {}
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(base, "config.json")
    return read_config(Path(cached).parent) if isinstance(cached, str) else {}


def _hub_base_config(base: str) -> dict[str, Any]:
    """The config.json alone of an adapter's base named by hub id (downloaded unless offline; {} on
    any failure, and the adapter is refused naming the base)."""
    if base.count("/") != 1 or base.startswith((".", "/", "~")):
        return {}
    from huggingface_hub import hf_hub_download

    try:
        return read_config(from_hub(hf_hub_download, base, "config.json").parent)
    except Exception:  # noqa: BLE001 - no base config to read: the refusal names the base
        return {}


def declared_architectures(config: dict[str, Any]) -> list[str]:
    """The class names a config declares in ``architectures`` (anything else there is ignored)."""
    declared = config.get("architectures")
    return [a for a in declared if isinstance(a, str)] if isinstance(declared, list) else []


def declaration(config: dict[str, Any]) -> str:
    """What a config declares, for messages: ``architecture ColQwen2_5 (ColPali family, multi-vector)``."""
    declared = declared_architectures(config)
    if not declared:
        return f"model type {config.get('model_type')!r}"
    named = [f"{a} ({NOT_IMPLEMENTED[a]})" if a in NOT_IMPLEMENTED else a for a in declared]
    return ("architecture " if len(named) == 1 else "architectures ") + ", ".join(named)


def _known() -> str:
    by_family: dict[str, list[str]] = {}
    for architecture, family in ARCHITECTURES.items():
        by_family.setdefault(family, []).append(architecture)
    return "; ".join(f"{family}: {', '.join(names)}" for family, names in by_family.items())


#: ``config_sentence_transformers.json`` model types of sentence-transformers folders that are not embedders
_ST_OTHER_KINDS = {"CrossEncoder": "a reranker (umr rerank --model, umr search --rerank)",
                   "SparseEncoder": "it makes sparse vectors"}


def _check_sentence_transformers(folder: Path) -> None:
    """A sentence-transformers folder the text family embeds: a SentenceTransformer of the
    library's own modules (not a cross-encoder, a sparse encoder, or custom/third-party modules
    such as PyLate's multi-vector ColBERT head)."""
    st_config_file = folder / "config_sentence_transformers.json"
    try:
        st_config = json.loads(st_config_file.read_text(encoding="utf-8")) if st_config_file.is_file() else {}
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
        types = [str(m["type"]) for m in modules]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelNotAvailable(f"{folder}: modules.json cannot be read as sentence-transformers modules "
                                f"({type(exc).__name__}: {exc})") from None
    kind = st_config.get("model_type") if isinstance(st_config, dict) else None
    if kind in _ST_OTHER_KINDS:
        raise ModelNotAvailable(f"{folder}: a sentence-transformers {kind}, {_ST_OTHER_KINDS[kind]}, not an embedder")
    foreign = [t for t in types if not t.startswith("sentence_transformers.")
               or t.startswith("sentence_transformers.sparse_encoder.")]
    if foreign:
        raise ModelNotAvailable(f"{folder}: sentence-transformers module(s) {', '.join(foreign)} are not "
                                f"the library's own, and umr does not implement them")


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
