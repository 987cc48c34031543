"""MM-Embed (``nvidia/MM-Embed``) as plain PyTorch modules, loadable without remote code.

MM-Embed is LLaVA-NeXT's CLIP ViT-L/14-336 vision tower and two-layer projector feeding
NV-Embed-v1's Mistral-7B, whose attention is **bidirectional**, followed by NV-Embed's
**latent-attention pooling** (every token cross-attends to a learned latent array, goes
through a GEGLU feed-forward, and the result is mean-pooled over a pool mask that leaves
out padding and the query instruction).

Module and parameter names follow the released checkpoint, whose model class subclasses
``LlavaNextForConditionalGeneration`` and swaps in NV-Embed's modules::

    vision_tower.vision_model.*            CLIP vision tower (transformers' CLIPVisionModel)
    multi_modal_projector.linear_{1,2}.*   projector (linear, GELU, linear)
    image_newline                          LLaVA-NeXT's image-newline embedding
    language_model.embed_tokens/layers/norm.*          bidirectional Mistral (no lm_head)
    latent_attention_model.latents / cross_attend_blocks.*   latent-attention pooling

so ``load_state_dict`` of the checkpoint's safetensors works by name. Only what embedding
needs is implemented: no generation, no KV cache, no training paths. NV-Embed's half (the
bidirectional Mistral and the pooling) lives in :mod:`.nv_embed`; this module holds the vision
side, the whole network, checkpoint loading and the embedder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...core.devices import cpu_default_dtype, resolve_dtype
from ...core.items import Item
from ..base import Embedder, Trainable, tokenizer_spans
from ..prefetch import Prefetching
from ..registry import ModelNotAvailable
from .nv_embed import (BidirectionalMistral, LatentAttentionPooling, LatentAttentionSettings, MistralSettings,
                       RotaryEmbedding)
from .processing_mmembed import MMEmbedProcessor, ProcessedItem, build_prompt


@dataclass
class MMEmbedSettings:
    """Everything the modules and the processor need, gathered from the checkpoint's configs."""

    vision_config: dict[str, Any]
    text: MistralSettings = field(default_factory=MistralSettings)
    latent: LatentAttentionSettings = field(default_factory=LatentAttentionSettings)
    image_token_index: int = 32000
    pad_token_id: int | None = 32001
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    projector_hidden_act: str = "gelu"
    padding_side: str = "right"
    add_eos_token: bool = True
    global_image_patch_only: bool = True


# --------------------------------------------------------------------------------------
# the whole model


class MultiModalProjector(nn.Module):
    def __init__(self, vision_hidden: int, text_hidden: int, act: str):
        super().__init__()
        from transformers.activations import ACT2FN

        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=True)
        self.act = ACT2FN[act]
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class VisionTower(nn.Module):
    """Holds a CLIP vision model under ``vision_model`` so parameter names match the checkpoint."""

    def __init__(self, vision_model: nn.Module):
        super().__init__()
        self.vision_model = vision_model

    def forward(self, *args, **kwargs):
        return self.vision_model(*args, **kwargs)


class MMEmbedModel(nn.Module):
    """The MM-Embed network: image features, bidirectional LLM, latent-attention pooling."""

    def __init__(self, settings: MMEmbedSettings):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        self.settings = settings
        vision_config = CLIPVisionConfig(**{k: v for k, v in settings.vision_config.items()
                                            if k not in ("model_type", "architectures")})
        clip = CLIPVisionModel(vision_config)
        if any(k.startswith("vision_model.") for k in clip.state_dict()):
            self.vision_tower = clip  # transformers 4.x: CLIPVisionModel.vision_model.*
        else:  # transformers 5 flattened CLIPVisionModel; keep the checkpoint's vision_model level
            self.vision_tower = VisionTower(clip)
        hidden = settings.text.hidden_size
        self.multi_modal_projector = MultiModalProjector(vision_config.hidden_size, hidden,
                                                         settings.projector_hidden_act)
        self.image_newline = nn.Parameter(torch.zeros(hidden))
        self.language_model = BidirectionalMistral(settings.text)
        self.latent_attention_model = LatentAttentionPooling(settings.latent)

    @property
    def dtype(self) -> torch.dtype:
        return self.image_newline.dtype

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) global patches -> (N, patches + 1, hidden): projected features plus newline.

        With a single (global) patch per image LLaVA-NeXT's ``pack_image_features`` keeps the
        patch features unchanged and appends ``image_newline``; the patch grid is not used.
        """
        out = self.vision_tower(pixel_values.to(self.dtype), output_hidden_states=True)
        feats = out.hidden_states[self.settings.vision_feature_layer]
        if self.settings.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]  # drop CLS
        feats = self.multi_modal_projector(feats)
        newline = self.image_newline.to(feats.dtype).expand(feats.shape[0], 1, -1)
        return torch.cat([feats, newline], dim=1)

    def encode(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
               pool_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.language_model(inputs_embeds, attention_mask)
        return self.latent_attention_model(hidden, pool_mask)


class MMEmbedLoadError(ModelNotAvailable, ValueError):
    """A folder or option that cannot make an MM-Embed model (reported as one line by the CLI)."""


def load_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load by name; missing or unexpected names are an error that lists a few of them."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise MMEmbedLoadError(
            f"checkpoint does not match MM-Embed: {len(missing)} missing (e.g. {missing[:5]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise MMEmbedLoadError(f"checkpoint does not match MM-Embed: {k} has shape {tuple(state[k].shape)}, "
                         f"the config implies {tuple(own[k].shape)} ({len(bad)} mismatches)")
    model.load_state_dict(state, strict=True, assign=True)



# --------------------------------------------------------------------------------------
# loading a checkpoint folder

#: NV-Embed-v1's configuration, used when the checkpoint's ``retriever`` config is not at hand
#: (MM-Embed's config.json names NV-Embed-v1 as its ``retriever`` but does not embed its config).
NV_EMBED_V1 = {
    "text_config": {"vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu"},
    "latent_attention_config": {"num_latents_value": 512, "num_cross_heads": 8, "cross_dim_head": 4096,
                                "latent_dim": 4096, "hidden_dim": 4096, "output_normalize": True},
}


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _retriever_config(config: dict[str, Any], folder: Path, option: Any) -> dict[str, Any] | None:
    """NV-Embed's config: the option, an inline copy, a local folder, or the hub cache."""
    if isinstance(option, dict):
        return option
    if option is not None:
        path = Path(option).expanduser()
        path = path / "config.json" if path.is_dir() else path
        return json.loads(path.read_text())
    if isinstance(config.get("retriever_config"), dict):
        return config["retriever_config"]
    retriever = config.get("retriever")
    if not retriever:
        return None
    for candidate in (Path(retriever).expanduser(), folder / retriever):
        if (candidate / "config.json").is_file():
            return json.loads((candidate / "config.json").read_text())
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(retriever, "config.json", local_files_only=True)).read_text())
    except Exception:  # noqa: BLE001 - not cached: fall back to NV-Embed-v1's known config
        return None


def _fill_from_shapes(text: dict[str, Any], latent: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Sizes that the weights themselves tell (used with the built-in NV-Embed-v1 defaults)."""
    emb = shapes.get("language_model.embed_tokens.weight")
    if emb:
        text["vocab_size"], text["hidden_size"] = emb
    layers = {int(k.split(".")[2]) for k in shapes if k.startswith("language_model.layers.")}
    if layers:
        text["num_hidden_layers"] = max(layers) + 1
    gate = shapes.get("language_model.layers.0.mlp.gate_proj.weight")
    if gate:
        text["intermediate_size"] = gate[0]
    lat = shapes.get("latent_attention_model.latents")
    if lat:
        latent["num_latents_value"], latent["latent_dim"] = lat
        latent["hidden_dim"] = lat[1]
    to_q = shapes.get("latent_attention_model.cross_attend_blocks.0.fn.to_q.weight")
    if to_q:
        latent["cross_dim_head"] = to_q[0] // latent.get("num_cross_heads", 8)


def read_settings(folder: Path, *, retriever_config: Any = None) -> MMEmbedSettings:
    config = json.loads((folder / "config.json").read_text())
    nv = _retriever_config(config, folder, retriever_config)
    if nv is None:
        nv = json.loads(json.dumps(NV_EMBED_V1))
        _fill_from_shapes(nv["text_config"], nv["latent_attention_config"], _weight_shapes(_weight_files(folder)))
    defaults = LatentAttentionSettings()
    latent = LatentAttentionSettings.from_dict({**defaults.__dict__, **(nv.get("latent_attention_config") or {})})
    # LlavaNextConfig's default vision tower (CLIP ViT-L/14 at 336 px) for keys a config leaves out
    vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
              "image_size": 336, "patch_size": 14, "projection_dim": 768, "hidden_act": "quick_gelu",
              **(config.get("vision_config") or {})}
    return MMEmbedSettings(
        vision_config=vision,
        text=MistralSettings.from_dict(nv.get("text_config") or {}),
        latent=latent,
        image_token_index=int(config.get("image_token_index", 32000)),
        pad_token_id=config.get("pad_token_id", 32001),
        vision_feature_layer=int(config.get("vision_feature_layer", -2)),
        vision_feature_select_strategy=config.get("vision_feature_select_strategy", "default"),
        projector_hidden_act=config.get("projector_hidden_act", "gelu"),
        padding_side=config.get("padding_side", "right"),
        add_eos_token=bool(config.get("add_eos_token", True)),
        global_image_patch_only=bool(config.get("global_image_patch_only", True)),
    )


def _materialise_buffers(model: MMEmbedModel) -> None:
    """Non-persistent buffers that stayed on the meta device after an ``assign`` load."""
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr == "inv_freq":
            s = model.settings.text
            fresh = RotaryEmbedding(s.dim_per_head, s.rope_theta).inv_freq
        elif attr == "position_ids":
            fresh = torch.arange(buf.shape[-1]).expand(buf.shape).clone()
        else:
            raise RuntimeError(f"buffer {name} has no value after loading")
        owner.register_buffer(attr, fresh, persistent=False)


def load_mmembed(folder: Path, *, dtype: torch.dtype | None = None, retriever_config: Any = None) -> MMEmbedModel:
    from safetensors.torch import load_file

    settings = read_settings(folder, retriever_config=retriever_config)
    if not settings.global_image_patch_only:
        raise MMEmbedLoadError("global_image_patch_only=false (LLaVA-NeXT's high-resolution tiles) is not "
                               "supported: MM-Embed embeds the global 336x336 view only")
    if settings.text.hidden_size != settings.latent.latent_dim:
        raise MMEmbedLoadError("latent_dim must equal the LLM's hidden size (NV-Embed's latent attention needs it)")
    if dtype is None:
        config = json.loads((folder / "config.json").read_text())
        stored = config.get("torch_dtype") or config.get("dtype")
        dtype = torch.float32 if stored == "float32" else torch.bfloat16
    with torch.device("meta"):
        model = MMEmbedModel(settings)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(folder):
        for key, value in load_file(str(f)).items():
            if key.endswith("embeddings.position_ids"):
                continue  # an old persistent buffer, recomputed
            state[key] = value.to(dtype)
    load_weights(model, state)
    _materialise_buffers(model)
    return model.eval()


# --------------------------------------------------------------------------------------
# the embedder


class MMEmbedEmbedder(Embedder, Prefetching, Trainable):
    """MM-Embed behind umr's :class:`~umr.models.base.Embedder` interface (4096-d for the real model)."""

    batch_size = 8
    cost_budget = 8 * 1024  # padded tokens (incl. 577 per image) per forward pass
    #: bfloat16 vectors within cosine 0.999 of float32 on the benchmark items? (worst 0.9938: no, opt-in)
    bf16_close = False
    #: MM-Embed's recipe: LoRA on the LLM, the projector trained fully
    lora_targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    train_modules = ("multi_modal_projector",)

    def __init__(self, model: MMEmbedModel, processor: MMEmbedProcessor, *, name: str = "mm-embed"):
        self.model = model
        self.processor = processor
        self.name = name
        self.dim = int(model.settings.latent.latent_dim)

    def vector_options(self) -> dict:
        p = self.processor
        return {"dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "max_length": p.max_length, "add_eos_token": bool(p.add_eos_token)}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        max_length: int = 512, retriever_config: Any = None,
                        add_eos_token: bool | None = None, **unknown: Any) -> "MMEmbedEmbedder":
        """Load a MM-Embed folder (config.json with ``model_type: llava_next``, safetensors, tokenizer).

        ``retriever_config`` points at NV-Embed-v1's config (a folder, a config.json or a dict)
        when neither the folder nor the hub cache has it; otherwise NV-Embed-v1's published
        sizes are used, checked against the weights.
        """
        if unknown:
            raise MMEmbedLoadError(
                f"MM-Embed does not take {', '.join(sorted(unknown))} (every image is its global "
                f"336x336 view, 577 tokens); options: max_length, retriever_config, add_eos_token, dtype")
        folder = Path(path)
        # on a GPU the checkpoint's own dtype (bfloat16); on a CPU see cpu_default_dtype
        torch_dtype = resolve_dtype(dtype, default=cpu_default_dtype(bf16_close=cls.bf16_close)
                                    if str(device) == "cpu" else None)
        model = load_mmembed(folder, dtype=torch_dtype, retriever_config=retriever_config).to(device)
        s = model.settings
        vc = s.vision_config
        patches = (int(vc.get("image_size", 336)) // int(vc.get("patch_size", 14))) ** 2
        if s.vision_feature_select_strategy != "default":
            patches += 1
        processor = MMEmbedProcessor.from_pretrained(
            folder, image_token_id=s.image_token_index, image_tokens=patches + 1,
            add_eos_token=s.add_eos_token if add_eos_token is None else add_eos_token,
            max_length=max_length, image_size=int(vc.get("image_size", 336)))
        return cls(model, processor, name=folder.name)

    @property
    def device(self) -> torch.device:
        return self.model.image_newline.device

    def _cost(self, item: Item) -> int:
        return self.processor.cost(item)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        return self.forward(self._each_item(items, self.prepare))

    def prepare(self, item: Item) -> ProcessedItem:
        return self.processor.prepare(item)

    def embed_prepared(self, prepared: list[ProcessedItem]) -> torch.Tensor:
        return self.forward(prepared)

    def text_window(self) -> int:
        """``max_length`` less the candidate prompt's own tokens (``<s>``, and ``</s>`` if added)."""
        return self.processor.max_length - self.processor.cost(Item.candidate(text=""))

    def text_window_beside_image(self, width: int, height: int) -> int:
        """:meth:`text_window` less the ``<image>`` tag and its newline only: MM-Embed cuts the
        prompt's token ids at ``max_length`` before the image's features are spliced in, so the
        image's own positions take none of the text's room."""
        p = self.processor
        return p.max_length - len(p.tokenize(build_prompt(Item.candidate(text=""), with_image=True)))

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.processor.tokenizer, text)

    def input_embeddings(self, processed: list[ProcessedItem]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Input embeddings (images spliced in), attention mask and pool mask, right-padded."""
        model, dtype, device = self.model, self.model.dtype, self.device
        batch = self.processor.collate(processed)
        feats = iter(())
        if "pixel_values" in batch:
            feats = iter(model.image_features(batch["pixel_values"].to(device)))
        embed = model.language_model.embed_tokens
        vocab = embed.num_embeddings
        # as the reference's forward: <image> -> 0 (a placeholder; its row is replaced by the image) and
        # <pad> -> </s> (the LLaVA-NeXT tokenizer's pad has no row in NV-Embed; the reference embeds EOS for it)
        pad, eos = self.model.settings.pad_token_id, self.processor.eos_id
        sequences = []
        for p in processed:
            ids = torch.tensor(p.input_ids, device=device)
            if pad is not None and eos is not None:
                ids = torch.where(ids == int(pad), torch.full_like(ids, eos), ids)
            ids = torch.where(ids >= vocab, torch.zeros_like(ids), ids)  # <image> (and any other id past the rows)
            tokens = embed(ids).to(dtype)
            if p.image_position is not None:
                k = p.image_position
                tokens = torch.cat([tokens[:k], next(feats).to(dtype), tokens[k + 1:]])
            sequences.append(tokens)
        longest = max(len(s) for s in sequences)
        hidden = sequences[0].shape[-1]
        inputs = torch.zeros(len(sequences), longest, hidden, dtype=dtype, device=device)
        attention = torch.zeros(len(sequences), longest, dtype=torch.long, device=device)
        for i, s in enumerate(sequences):
            inputs[i, : len(s)] = s
            attention[i, : len(s)] = 1
        pool = attention.clone()
        for i, p in enumerate(processed):
            pool[i, : p.instruction_length] = 0
        return inputs, attention, pool

    # -- training (umr.train) ----------------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def save_pretrained(self, folder: str | Path) -> None:
        """The weights under the released checkpoint's names, as :func:`load_mmembed` reads them."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(Path(folder) / "model.safetensors"))

    def forward(self, processed: list[ProcessedItem]) -> torch.Tensor:
        inputs, attention, pool = self.input_embeddings(processed)
        return self.model.encode(inputs, attention, pool).float()
