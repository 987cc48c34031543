"""ColQwen2 / ColQwen2.5: colpali-engine's late-interaction retrievers on Qwen2-VL / Qwen2.5-VL.

An item's token vectors are the final hidden states of its whole sequence (text, or the fixed
image prompt with its image tokens), projected to 128 dimensions by ``custom_text_proj``,
L2-normalised token by token; colpali-engine's padding rows (zeroed by its mask) are simply not
there. Positions are the 3-D M-RoPE positions colpali-engine's forward pass gives each token.

A published checkpoint is a PEFT LoRA adapter (``vidore/colqwen2.5-v0.2``) on a base
(``vidore/colqwen2.5-base``, ``architectures: ["ColQwen2_5"]``) named by the adapter's
``base_model_name_or_path``; a base or merged checkpoint loads on its own. The adapter is merged
into the weights at load (colpali-engine runs it beside them: the same function, rounded
differently, within 1e-6). Only the vision tower, the decoder and the projection are kept.
Speed comes from umr's Qwen-VL paths (:mod:`umr.models.qwen_vl_fast`): the vision tower once per
batch on real images, the decoder on the batch's sequences packed back to back (no padding).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ...core.devices import cpu_default_dtype, resolve_dtype
from ...core.items import Item
from ..base import tokenizer_spans
from ..checkpoints import load_checkpoint
from ..identity import files_fingerprint
from ..multivector import MultiVectorEmbedder
from ..qwen_vl_fast import decode_packed, speed_up_vision, supports_packed
from ..registry import ModelNotAvailable, local_folder
from .processing_colqwen import DEFAULT_MAX_LENGTH, ColQwenProcessor, ProcessedItem

#: config.json ``architectures`` of the checkpoints this family loads
ARCHITECTURES = ("ColQwen2_5", "ColQwen2")
PROJECTION = "custom_text_proj"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class ColQwenEmbedder(MultiVectorEmbedder):
    """ColQwen2 / ColQwen2.5 token vectors (128-d) for text queries and page images."""

    batch_size = 8
    #: padded tokens (items x longest sequence) per forward pass
    cost_budget = 8192
    #: bfloat16 is opt-in, as for GME (the same Qwen-VL decoder)
    bf16_close = False

    def __init__(self, model, projection: torch.nn.Linear, processor: ColQwenProcessor, *, name: str = "colqwen",
                 device: str = "cpu", base: Path | None = None):
        #: the base checkpoint folder an adapter was merged into (None: loaded whole)
        self.base = base
        self.model = model
        self.projection = projection
        self.processor = processor
        self.name = name
        self.device = torch.device(device)
        self.dim = int(projection.out_features)
        self.image_token_id = int(model.config.image_token_id)
        self._fast_decoder = supports_packed(model.language_model, qk_norm=False)
        speed_up_vision(model.visual)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int = DEFAULT_MAX_LENGTH, attn_implementation: str = "sdpa") -> "ColQwenEmbedder":
        """Load a ColQwen adapter folder (its base found through ``base_model_name_or_path``) or a
        base / merged checkpoint folder.

        ``min_image_tokens`` / ``max_image_tokens`` replace the processor's pixel bounds in
        merged 28x28 tokens (colpali-engine's ``max_num_visual_tokens``). ``dtype``: float32
        unless given (bfloat16 by choice).
        """
        from transformers import AutoModel

        folder = Path(path)
        adapter = read_adapter_config(folder)
        base = base_folder(folder, adapter) if adapter is not None else folder
        check_architecture(base)
        torch_dtype = resolve_dtype(dtype, default=cpu_default_dtype(bf16_close=cls.bf16_close)
                                    if str(device) == "cpu" else torch.float32)
        _, model = load_checkpoint(AutoModel, base, what="a ColQwen2/ColQwen2.5 base checkpoint",
                                   dtype=torch.float32, attn_implementation=attn_implementation)
        if not hasattr(model, "language_model") or not hasattr(model, "get_image_features"):
            raise ModelNotAvailable(f"{base}: {type(model).__name__} is not a Qwen2-VL style model")
        tensors = read_tensors(base, [f"{PROJECTION}.weight", f"{PROJECTION}.bias"])
        projection = torch.nn.Linear(tensors[f"{PROJECTION}.weight"].shape[1], tensors[f"{PROJECTION}.weight"].shape[0])
        with torch.no_grad():
            projection.weight.copy_(tensors[f"{PROJECTION}.weight"])
            projection.bias.copy_(tensors[f"{PROJECTION}.bias"])
        if adapter is not None:
            merge_lora(folder, adapter, model, projection)
        model.to(device=device, dtype=torch_dtype).eval()
        projection.to(device=device, dtype=torch_dtype).eval()
        processor_folder = folder if (folder / "preprocessor_config.json").is_file() else base
        processor = ColQwenProcessor.from_pretrained(processor_folder, min_image_tokens=min_image_tokens,
                                                     max_image_tokens=max_image_tokens, max_length=max_length)
        return cls(model, projection, processor, name=folder.name, device=device,
                   base=base if adapter is not None else None)

    def vector_options(self) -> dict:
        """Options that change vectors, and the base's files for an adapter (the identity
        fingerprints only the folder loaded)."""
        p = self.processor
        options = {"dtype": str(self.dtype).removeprefix("torch."), "min_pixels": p.min_pixels,
                   "max_pixels": p.max_pixels, "max_length": p.max_length}
        if self.base is not None:
            options["base_files"] = files_fingerprint(self.base)
        return options

    @property
    def dtype(self) -> torch.dtype:
        return self.projection.weight.dtype

    # -- the MultiVectorEmbedder hooks ----------------------------------------------------------

    def _cost(self, item: Item) -> int:
        return self.processor.cost(item)

    def prepare(self, item: Item) -> ProcessedItem:
        return self.processor.prepare(item)

    @torch.inference_mode()
    def embed_prepared(self, prepared: list[ProcessedItem]) -> list[torch.Tensor]:
        return self.token_vectors(prepared)

    def text_window(self) -> int:
        return self.processor.max_length

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.processor.tokenizer, text)

    # -- the model -------------------------------------------------------------------------------

    def token_vectors(self, processed: list[ProcessedItem]) -> list[torch.Tensor]:
        """Each sequence's projected, L2-normalised token vectors ``(n_tokens, dim)`` float32."""
        batch = self.processor.collate(processed)
        lengths = batch["lengths"]
        input_ids = batch["input_ids"].to(self.device)
        embeds = self.model.get_input_embeddings()(input_ids)  # (T, H): all sequences back to back
        if "pixel_values" in batch:
            features = self.model.get_image_features(batch["pixel_values"].to(self.device, self.dtype),
                                                     image_grid_thw=batch["image_grid_thw"].to(self.device))
            embeds[input_ids == self.image_token_id] = torch.cat(list(features.pooler_output)).to(embeds.dtype)
        positions = batch["positions"].to(self.device)
        if self._fast_decoder:
            hidden = decode_packed(self.model.language_model, embeds, lengths, positions[:, None, :], pooled=False)
        else:
            hidden = self._decode_padded(embeds, lengths, positions)
        vectors = self.projection(hidden).float()
        vectors = vectors / vectors.norm(dim=-1, keepdim=True)  # colpali-engine's normalisation, no epsilon
        return list(torch.split(vectors, lengths))

    def _decode_padded(self, embeds: torch.Tensor, lengths: list[int], positions: torch.Tensor) -> torch.Tensor:
        """transformers' decoder on right-padded rows (for decoders the packed path does not cover);
        the real tokens' states, back to back."""
        lm = self.model.language_model
        batch, width = len(lengths), max(lengths)
        padded = embeds.new_zeros(batch, width, embeds.shape[-1])
        position_ids = positions.new_zeros(3, batch, width)
        mask = torch.zeros(batch, width, dtype=torch.long, device=embeds.device)
        start = 0
        for row, n in enumerate(lengths):
            padded[row, :n] = embeds[start: start + n]
            position_ids[:, row, :n] = positions[:, start: start + n]
            mask[row, :n] = 1
            start += n
        hidden = lm(inputs_embeds=padded, attention_mask=mask, position_ids=position_ids,
                    use_cache=False).last_hidden_state
        return hidden[mask.bool()]


# -- the published layout: base + LoRA adapter -------------------------------------------------------

def read_adapter_config(folder: Path) -> dict | None:
    """The folder's ``adapter_config.json`` (None for a base or merged checkpoint)."""
    config_file = folder / ADAPTER_CONFIG
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text())


def base_folder(folder: Path, adapter: dict) -> Path:
    """The base checkpoint an adapter names (``base_model_name_or_path``): a folder (absolute, or
    relative to the adapter's), else a hub id found in the local cache or downloaded."""
    source = adapter.get("base_model_name_or_path")
    if not source:
        raise ModelNotAvailable(f"{folder / ADAPTER_CONFIG}: no base_model_name_or_path: which base does it adapt?")
    for candidate in (Path(source).expanduser(), folder / source):
        if candidate.is_dir():
            return candidate
    return local_folder(source, shown_as=f"{source} (the base of {folder.name})")


def base_architecture(folder: Path) -> str | None:
    """The ColQwen architecture a checkpoint folder declares (an adapter folder without a
    config.json: its base's); None if it declares none. A base that cannot be found raises
    :class:`ModelNotAvailable` naming it."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        adapter = read_adapter_config(folder)
        if not (adapter or {}).get("base_model_name_or_path"):
            return None
        config_file = base_folder(folder, adapter) / "config.json"
        if not config_file.is_file():
            return None
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    return next((a for a in architectures if a in ARCHITECTURES), None)


def check_architecture(base: Path) -> None:
    config_file = base / "config.json"
    if not config_file.is_file():
        raise ModelNotAvailable(f"{base}: no config.json, not a ColQwen checkpoint folder")
    architectures = json.loads(config_file.read_text()).get("architectures") or []
    if not any(a in ARCHITECTURES for a in architectures):
        raise ModelNotAvailable(f"{base}: config.json declares {architectures or 'no architectures'}, "
                                f"not one of {', '.join(ARCHITECTURES)}")


def read_tensors(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Named tensors of a checkpoint folder, single-file or sharded (``model.safetensors.index.json``)."""
    from safetensors import safe_open

    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map", {})
        files = {name: folder / weight_map[name] for name in names if name in weight_map}
    else:
        files = {name: folder / "model.safetensors" for name in names}
    missing = [name for name in names if name not in files]
    out: dict[str, torch.Tensor] = {}
    for name, file in files.items():
        try:
            with safe_open(str(file), framework="pt") as handle:
                if name not in handle.keys():
                    missing.append(name)
                    continue
                out[name] = handle.get_tensor(name).float()
        except OSError as exc:
            raise ModelNotAvailable(f"{folder}: cannot read {file.name}: {exc}") from None
    if missing:
        raise ModelNotAvailable(f"{folder}: the checkpoint lacks {', '.join(sorted(missing))}; is it a ColQwen base?")
    return out


#: a LoRA tensor of colpali-engine's adapters: ``base_model.model.<module>.lora_<A|B>.weight``
_LORA_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


def merge_lora(folder: Path, adapter: dict, model: torch.nn.Module, projection: torch.nn.Linear) -> None:
    """Add a PEFT LoRA adapter into the weights: ``W += scale * B @ A`` for each adapted linear
    layer, ``scale = lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA), ``r`` read from each ``A``.

    Module names are the checkpoints' (transformers 4.x) ones: ``model.layers.*`` is the decoder,
    ``visual.*`` the vision tower, ``custom_text_proj`` the projection. Anything this cannot apply
    exactly (DoRA, per-module alphas, other tensors) is refused, never half-applied.
    """
    from safetensors.torch import load_file

    if adapter.get("peft_type", "LORA") != "LORA":
        raise ModelNotAvailable(f"{folder}: a {adapter.get('peft_type')} adapter; umr applies LoRA adapters only")
    unsupported = [key for key in ("use_dora", "alpha_pattern", "fan_in_fan_out", "modules_to_save")
                   if adapter.get(key)]
    if unsupported:
        raise ModelNotAvailable(f"{folder}: adapter option(s) {', '.join(unsupported)} are not supported")
    weights_file = folder / ADAPTER_WEIGHTS
    if not weights_file.is_file():
        raise ModelNotAvailable(f"{folder}: no {ADAPTER_WEIGHTS} beside {ADAPTER_CONFIG}")
    state = load_file(str(weights_file))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise ModelNotAvailable(f"{folder}: adapter tensor {key!r} is not a LoRA A/B weight umr can apply")
        pairs.setdefault(match["module"], {})[match["part"]] = tensor.float()
    alpha = float(adapter.get("lora_alpha", 8))
    modules = dict(model.named_modules())
    for module_name, pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            raise ModelNotAvailable(f"{folder}: adapter module {module_name!r} lacks its lora_A or lora_B")
        layer = projection if module_name == PROJECTION else modules.get(_backbone_name(module_name))
        if not isinstance(layer, torch.nn.Linear):
            raise ModelNotAvailable(f"{folder}: adapter module {module_name!r} is no linear layer of the base")
        rank = pair["A"].shape[0]
        scale = alpha / (rank ** 0.5 if adapter.get("use_rslora") else rank)
        delta = (pair["B"] @ pair["A"]) * scale
        if delta.shape != layer.weight.shape:
            raise ModelNotAvailable(f"{folder}: adapter module {module_name!r} has shape {tuple(delta.shape)}, "
                                    f"the base {tuple(layer.weight.shape)}")
        with torch.no_grad():
            layer.weight.add_(delta.to(layer.weight.dtype))


def _backbone_name(name: str) -> str:
    """A checkpoint module name (``model.layers.3.mlp.up_proj``) as transformers 5 names it in
    the Qwen-VL base model (``language_model.layers.3.mlp.up_proj``)."""
    if name.startswith("model."):
        return "language_model." + name[len("model."):]
    return name
