"""CLIP-SF (UniIR's score-fusion CLIP) and plain CLIP / SigLIP dual encoders.

A text is embedded by the text tower, an image by the vision tower, and an item with both by
their **sum** (UniIR's ``CLIPScoreFusion.fuse_embeddings``: ``img_emb + txt_emb`` of the raw,
unnormalised projections); the base class then L2-normalises the result, as UniIR normalises
embeddings before scoring. Instructions are prefixed to query texts as UniIR does (see
:mod:`.processing_clip_sf`).

Weights come from a Hugging Face CLIP or SigLIP folder (``model_type`` ``clip`` or
``siglip``). UniIR's released CLIP-SF checkpoints (``clip_sf_large.pth``, a ``torch.save``
of ``{"model": CLIPScoreFusion.state_dict(), ...}``, i.e. OpenAI CLIP names under
``clip_model.``) are loaded over a CLIP folder of the same architecture: put the ``.pth``
in the folder, or pass ``checkpoint=PATH`` (or ``checkpoint="TIGER-Lab/UniIR/checkpoint/CLIP_SF/clip_sf_large.pth"``
to fetch it from the hub). Their OpenAI names are converted to transformers' by
:func:`uniir_to_hf`; every tensor must find its place and every parameter must be filled.
"""

from __future__ import annotations

import json
import os
from typing import Any
from pathlib import Path
import torch

from ...core.devices import resolve_dtype
from ...core.items import Item
from ..base import Embedder, Trainable, tokenizer_spans
from ..prefetch import Prefetching
from ..registry import ModelNotAvailable, from_hub
from .processing_clip_sf import ClipSfProcessor, ImageTransform

class ClipSfLoadError(ModelNotAvailable, ValueError):
    """A folder, checkpoint or option that cannot make a CLIP-SF model (one line in the CLI)."""


# --------------------------------------------------------------------------------------
# UniIR / OpenAI CLIP names <-> transformers names

_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TRANSPOSED = {"text_projection": "text_projection.weight", "visual.proj": "visual_projection.weight"}


def strip_uniir_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``{"model": ...}`` or a bare state dict; drops ``module.`` (DDP) and ``clip_model.``."""
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "clip_model."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def uniir_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP (ViT) parameter names, as in UniIR's checkpoints, to ``CLIPModel``'s.

    Raises ``ValueError`` naming any tensor it does not know where to put.
    """
    state = strip_uniir_prefix(state)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key in ("input_resolution", "context_length", "vocab_size"):
            continue  # ints stored by OpenAI's JIT archives, not parameters
        if key in _TOP:
            out[_TOP[key]] = value
        elif key in _TRANSPOSED:
            out[_TRANSPOSED[key]] = value.t().contiguous()
        elif key.startswith(("transformer.resblocks.", "visual.transformer.resblocks.")):
            tower = "vision_model" if key.startswith("visual.") else "text_model"
            rest = key.split("resblocks.", 1)[1]
            index, _, name = rest.partition(".")
            base = f"{tower}.encoder.layers.{index}."
            if name in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = name.rsplit("_", 1)[1]  # weight / bias
                q, k, v = value.chunk(3, dim=0)
                out[base + f"self_attn.q_proj.{kind}"] = q.contiguous()
                out[base + f"self_attn.k_proj.{kind}"] = k.contiguous()
                out[base + f"self_attn.v_proj.{kind}"] = v.contiguous()
                continue
            module, _, leaf = name.rpartition(".")
            if module in _BLOCK:
                out[base + f"{_BLOCK[module]}.{leaf}"] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ClipSfLoadError(f"not a UniIR CLIP-SF / OpenAI CLIP (ViT) checkpoint: unknown tensors {unknown[:5]}"
                         + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return out


def hf_to_uniir(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`uniir_to_hf`, with UniIR's ``clip_model.`` prefix (for fixtures)."""
    top = {v: k for k, v in _TOP.items()}
    transposed = {v: k for k, v in _TRANSPOSED.items()}
    block = {v: k for k, v in _BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("position_ids"):
            continue
        if key in top:
            out[top[key]] = value
        elif key in transposed:
            out[transposed[key]] = value.t().contiguous()
        else:
            tower, _, rest = key.partition(".encoder.layers.")
            index, _, name = rest.partition(".")
            prefix = ("visual." if tower == "vision_model" else "") + f"transformer.resblocks.{index}."
            module, _, leaf = name.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((prefix, leaf), {})[module[-6]] = value
            else:
                out[prefix + f"{block[module]}.{leaf}"] = value
    for (prefix, leaf), parts in qkv.items():
        out[prefix + f"attn.in_proj_{leaf}"] = torch.cat([parts["q"], parts["k"], parts["v"]]).contiguous()
    return {f"clip_model.{k}": v for k, v in sorted(out.items())}


def resolve_checkpoint(checkpoint: str | os.PathLike) -> Path:
    """The local file a ``checkpoint=`` value names: a path, or ``owner/repo/path.pth`` on the hub."""
    path = Path(checkpoint).expanduser()
    if path.is_file():
        return path
    parts = str(checkpoint).split("/")
    if len(parts) >= 3 and not str(checkpoint).startswith((".", "/", "~")):
        from huggingface_hub import hf_hub_download

        repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
        try:
            return from_hub(hf_hub_download, repo, filename)
        except Exception as exc:  # noqa: BLE001
            raise ModelNotAvailable(
                f"UniIR checkpoint {checkpoint} is not on this machine and could not be downloaded "
                f"({type(exc).__name__}). Download {filename} from {repo} and pass checkpoint=/path/to/it "
                f"(or put it in the CLIP folder)") from None
    raise FileNotFoundError(f"no such checkpoint file: {checkpoint}")


def _inert(qualified: str) -> type:
    """A stand-in for a pickled class or function that must not be imported or run.

    UniIR's training script saves its OmegaConf config next to the weights; we only want the
    tensors, so every such object is rebuilt as an inert placeholder that ignores its state.
    """
    module, _, name = qualified.rpartition(".")

    def swallow(self, *args, **kwargs):
        return None

    return type(name or qualified, (), {"__module__": module, "__init__": swallow, "__setstate__": swallow,
                                        "__call__": swallow, "__getattr__": lambda self, key: None})


def load_uniir_state(path: Path, *, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Read the tensors of a UniIR ``.pth`` without running its pickled code.

    Loaded with ``weights_only=True``; pickled extras (UniIR saves its OmegaConf ``config``
    beside the weights) are replaced by inert placeholders. ``trust_checkpoint=True`` uses a
    full ``pickle`` load instead, for files you trust that still cannot be read that way.
    """
    import pickle

    try:
        if trust_checkpoint:
            raw = torch.load(str(path), map_location="cpu", weights_only=False)
        else:
            try:
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                with torch.serialization.safe_globals([(_inert(n), n) for n in names]):
                    raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file becomes one clear line
        if trust_checkpoint:
            raise
        raise ClipSfLoadError(
            f"{path}: cannot be read safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            f"If you trust the file, load it with trust_checkpoint=True") from None
    return {k: v for k, v in strip_uniir_prefix(raw).items() if isinstance(v, torch.Tensor)}


# --------------------------------------------------------------------------------------
# the embedder


class ClipSfEmbedder(Embedder, Prefetching, Trainable):
    """Dual-encoder embedder: text, image, or their sum (score fusion)."""

    batch_size = 64
    cost_budget = None
    #: LoRA on the attention projections of both towers
    lora_targets = r".*\.(q_proj|k_proj|v_proj|out_proj)"

    def __init__(self, model, processor: ClipSfProcessor, *, name: str = "clip-sf"):
        self.model = model
        self.processor = processor
        self.kind = processor.kind
        self.name = name
        if self.kind == "siglip":
            self.dim = int(model.config.text_config.hidden_size)
        else:
            self.dim = int(model.config.projection_dim)

    def vector_options(self) -> dict:
        return {"dtype": str(self.dtype).removeprefix("torch."), "max_length": self.processor.max_length,
                "uniir_text": bool(self.processor.uniir_text)}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        checkpoint: str | os.PathLike | bool | None = None, trust_checkpoint: bool = False,
                        uniir_text: bool = True, max_length: int | None = None, **unknown: Any) -> "ClipSfEmbedder":
        """Load a CLIP/SigLIP folder, optionally with UniIR CLIP-SF weights on top.

        ``checkpoint``: a UniIR ``.pth`` (path, or ``owner/repo/path/in/repo.pth`` on the hub);
        by default the single ``*.pth`` in the folder, if there is one; ``False`` never uses one. ``uniir_text``: format
        texts with UniIR's ``format_string`` (capitalise, end with a period), as UniIR does for
        every model it evaluates.
        """
        from transformers import AutoTokenizer, CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

        if unknown:
            raise ClipSfLoadError(f"CLIP-SF/CLIP/SigLIP models do not take {', '.join(sorted(unknown))} "
                                  f"(images are resized to the vision tower's input size); options: checkpoint, "
                                  f"trust_checkpoint, uniir_text, max_length, dtype")
        folder = Path(path)
        config = json.loads((folder / "config.json").read_text())
        kind = config.get("model_type")
        if kind not in ("clip", "siglip"):
            raise ClipSfLoadError(f"{folder}: model_type {kind!r} is not clip or siglip")
        if checkpoint is False:  # plain CLIP even if a .pth lies in the folder
            checkpoint = None
        elif checkpoint is None:
            found = sorted(folder.glob("*.pth")) + sorted(folder.glob("*.pt"))
            if len(found) > 1:
                raise ClipSfLoadError(f"{folder}: several checkpoints {[p.name for p in found]}; pick one with checkpoint=")
            checkpoint = found[0] if found else None
        model_cls, config_cls = (SiglipModel, SiglipConfig) if kind == "siglip" else (CLIPModel, CLIPConfig)
        torch_dtype = resolve_dtype(dtype)
        if checkpoint is not None:
            if kind != "clip":
                raise ClipSfLoadError("UniIR CLIP-SF checkpoints are OpenAI CLIP models: use a CLIP folder")
            state = uniir_to_hf(load_uniir_state(resolve_checkpoint(checkpoint), trust_checkpoint=trust_checkpoint))
            model = model_cls(config_cls.from_pretrained(str(folder)))
            own = {k for k in model.state_dict() if not k.endswith("position_ids")}
            missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
            if missing or unexpected:
                raise ClipSfLoadError(f"UniIR checkpoint does not fit {folder.name}: missing {missing[:5]}, "
                                 f"unexpected {unexpected[:5]}")
            model.load_state_dict(state, strict=False)
            crop_rounding = "round"  # UniIR preprocesses with torchvision (OpenAI's clip.load)
        else:
            model = model_cls.from_pretrained(str(folder), local_files_only=True)
            crop_rounding = "floor"
        model = model.to(device=device, dtype=torch_dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        vision_size = int(model.config.vision_config.image_size)
        transform = ImageTransform.from_folder(folder, kind=kind, image_size=vision_size, crop_rounding=crop_rounding)
        text_positions = int(model.config.text_config.max_position_embeddings)
        processor = ClipSfProcessor(tokenizer, transform, kind=kind, uniir_text=uniir_text,
                                    max_length=min(max_length or text_positions, text_positions))
        return cls(model, processor, name=folder.name)

    @property
    def max_length(self) -> int:
        """Tokens the text tower reads (77 for CLIP); longer texts are cut."""
        return self.processor.max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- training (umr.train) ----------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def save_pretrained(self, folder: str | Path) -> None:
        """A UniIR ``.pth`` when loaded from one (so the folder keeps UniIR's preprocessing), else
        Hugging Face weights."""
        if self.processor.transform.crop_rounding == "round":
            torch.save({"model": hf_to_uniir(self.model.state_dict())}, str(Path(folder) / "clip_sf.pth"))
        else:
            self.model.save_pretrained(str(folder))

    # -- towers ---------------------------------------------------------------------------

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Raw (unnormalised) text embeddings."""
        return self._text_tower(self.processor.tokenize(texts))

    def _text_tower(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model.text_model(**{name: value.to(self.device) for name, value in tokens.items()})
        if self.kind == "siglip":  # pools the last position
            return out.pooler_output
        return self.model.text_projection(out.pooler_output)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Raw (unnormalised) image embeddings of preprocessed ``(N, 3, S, S)`` pixels."""
        out = self.model.vision_model(pixel_values=pixel_values.to(self.device, self.dtype))
        if self.kind == "siglip":
            return out.pooler_output
        return self.model.visual_projection(out.pooler_output)

    # -- Embedder hooks ---------------------------------------------------------------------

    def _cost(self, item: Item) -> int:
        return self.processor.cost(item)

    def text_window(self) -> int:
        """``max_length`` (77 for CLIP) less the start/end tokens and the period UniIR may append."""
        p = self.processor
        return p.max_length - p.tokenizer.num_special_tokens_to_add(pair=False) - int(p.uniir_text)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.processor.tokenizer, text)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        return self.embed_prepared(self._each_item(items, self.prepare))

    def prepare(self, item: Item) -> tuple[torch.Tensor | None, str]:
        return self.processor.prepare(item)

    def embed_prepared(self, prepared: list[tuple[torch.Tensor | None, str]]) -> torch.Tensor:
        batch = self.processor.collate(prepared)
        out = torch.zeros(len(prepared), self.dim, dtype=torch.float32, device=self.device)
        if batch["text_rows"]:
            out[batch["text_rows"]] += self._text_tower(batch["text"]).float()
        if batch["image_rows"]:
            out[batch["image_rows"]] += self.encode_images(batch["pixel_values"]).float()
        return out
