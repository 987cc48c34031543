"""Tiny, randomly initialised ColQwen2 / ColQwen2.5 checkpoints for tests, examples and benchmarks.

:func:`write_tiny_colqwen` writes the two folders the published models are made of:

* the **base** (like ``vidore/colqwen2.5-base`` / ``vidore/colqwen2-base``): a flat (transformers
  4.x era) ``config.json`` declaring ``architectures: ["ColQwen2_5"]`` (``model_type``
  ``qwen2_5_vl``) or ``["ColQwen2"]`` (``qwen2_vl``), weights under the old names
  (``model.layers.*``, ``model.embed_tokens.weight``, ``visual.*``, ``custom_text_proj.*``; no
  ``lm_head``: it is tied), a byte-level BPE tokenizer with Qwen2-VL's special tokens and
  ``preprocessor_config.json``;
* the **adapter** (like ``vidore/colqwen2.5-v0.2`` / ``vidore/colqwen2-v1.0``): a PEFT LoRA on the
  decoder's projections and on ``custom_text_proj`` (``adapter_config.json`` naming the base in
  ``base_model_name_or_path``, ``adapter_model.safetensors`` with ``base_model.model.*`` keys), the
  tokenizer and processor files, and no ``config.json``.

Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from .gme import build_tokenizer, flat_text_config, save_jittered, write_tokenizer_files

#: The default tiny architecture (the projection is colpali-engine's fixed 128 dimensions).
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, mrope_section=[1, 1, 2])
TINY_VISION = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, intermediate_size=64,
                   window_size=56, fullatt_block_indexes=[1])
PROJECTION_DIM = 128

#: the adapter the published checkpoints train (colpali-engine's training configs), at a tiny rank
LORA_TARGETS = ("(.*(model)(?!.*visual).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$"
                "|.*(custom_text_proj).*$)")
LORA_MODULES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

#: what distinguishes the two versions in config.json
VERSIONS = {
    "2.5": {"architecture": "ColQwen2_5", "model_type": "qwen2_5_vl"},
    "2": {"architecture": "ColQwen2", "model_type": "qwen2_vl"},
}


def write_tiny_colqwen(folder: str | Path, version: Literal["2.5", "2"] = "2.5", *, seed: int = 0,
                       base_folder: str | Path | None = None, lora_rank: int = 4, lora_alpha: int = 8,
                       text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None,
                       vocab_size: int = 512, initializer_range: float = 0.1,
                       base_name: str | None = None) -> Path:
    """Write a tiny ColQwen adapter checkpoint to ``folder`` and its base to ``base_folder``
    (default: ``<folder>-base`` beside it); return ``folder``, the one to load.

    ``base_name`` is what ``adapter_config.json`` calls the base (``base_model_name_or_path``):
    the base folder's absolute path unless given (e.g. ``vidore/colqwen2.5-base`` for a test that
    puts the base in a hub cache).
    """
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {', '.join(VERSIONS)}, not {version!r}")
    folder = Path(folder)
    base = Path(base_folder) if base_folder is not None else folder.with_name(folder.name + "-base")
    hidden = write_tiny_colqwen_base(base, version, seed=seed, text=text, vision=vision, vocab_size=vocab_size,
                                     initializer_range=initializer_range)
    _write_adapter(folder, base, base_name or str(base.resolve()), seed=seed, rank=lora_rank, alpha=lora_alpha,
                   hidden=hidden)
    return folder


def write_tiny_colqwen_base(folder: str | Path, version: Literal["2.5", "2"] = "2.5", *, seed: int = 0,
                            text: dict[str, Any] | None = None, vision: dict[str, Any] | None = None,
                            vocab_size: int = 512, initializer_range: float = 0.1) -> dict[str, int]:
    """Write only the base checkpoint (it loads on its own too); returns the decoder's layer count,
    hidden and intermediate sizes (what the adapter is shaped by)."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed, vocab_size)
    ids = write_tokenizer_files(folder, tokenizer, model_max_length=32768, padding_side="left")
    t = {**TINY_TEXT, **(text or {})}
    v = {**TINY_VISION, **(vision or {})}
    flat = {
        "architectures": [VERSIONS[version]["architecture"]],
        "model_type": VERSIONS[version]["model_type"],
        **flat_text_config(t, tokenizer.get_vocab_size(), ids, initializer_range=initializer_range),
        "vision_config": _vision_config(version, v, t["hidden_size"], initializer_range),
    }
    model = _random_model(version, flat, seed)

    def jitter(name, param, generator):  # RMS/LayerNorm weights start at 1: jitter them so they matter
        if name.endswith("norm.weight") or ".norm" in name or "ln_q" in name:
            param.add_(0.1 * torch.randn(param.shape, generator=generator))

    save_jittered(model, folder, seed=seed, jitter=jitter)
    weights = folder / "model.safetensors"
    state = {}
    for key, value in load_file(str(weights)).items():  # the transformers 4.x names the real base uses
        if key.startswith("model.language_model."):
            key = "model." + key[len("model.language_model."):]
        elif key.startswith("model.visual."):
            key = key[len("model."):]
        elif key.startswith("lm_head."):
            continue  # tied to the embeddings: not stored
        state[key] = value.contiguous()
    generator = torch.Generator().manual_seed(seed + 2)
    bound = t["hidden_size"] ** -0.5  # nn.Linear's own initialisation range
    state["custom_text_proj.weight"] = (torch.rand(PROJECTION_DIM, t["hidden_size"], generator=generator) * 2 - 1) * bound
    state["custom_text_proj.bias"] = (torch.rand(PROJECTION_DIM, generator=generator) * 2 - 1) * bound
    save_file(dict(sorted(state.items())), str(weights), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(flat, indent=2))
    _write_preprocessor(folder)
    head_dim = t["hidden_size"] // t["num_attention_heads"]
    return {"layers": t["num_hidden_layers"], "hidden": t["hidden_size"], "intermediate": t["intermediate_size"],
            "kv": t["num_key_value_heads"] * head_dim}


def _vision_config(version: str, v: dict[str, Any], text_hidden: int, initializer_range: float) -> dict[str, Any]:
    common = {"in_chans": 3, "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
              "temporal_patch_size": 2, "initializer_range": initializer_range, "depth": v["depth"],
              "num_heads": v["num_heads"]}
    if version == "2":  # Qwen2-VL: QuickGELU MLP, ``embed_dim`` wide, merged into the text width
        return {**common, "hidden_act": "quick_gelu", "embed_dim": v["embed_dim"], "mlp_ratio": v["mlp_ratio"],
                "hidden_size": text_hidden}
    # Qwen2.5-VL: SwiGLU MLP, window attention but in the full-attention blocks
    return {**common, "hidden_act": "silu", "hidden_size": v["hidden_size"], "intermediate_size": v["intermediate_size"],
            "out_hidden_size": text_hidden, "window_size": v["window_size"], "tokens_per_second": 2,
            "fullatt_block_indexes": list(v["fullatt_block_indexes"])}


def _random_model(version: str, flat: dict[str, Any], seed: int):
    import torch
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    config_class, model_class = ((Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration) if version == "2.5"
                                 else (Qwen2VLConfig, Qwen2VLForConditionalGeneration))
    config = config_class(**json.loads(json.dumps(flat)))
    torch.manual_seed(seed)
    return model_class(config).eval()


def _write_preprocessor(folder: Path) -> None:
    """The published processor settings: Qwen2-VL's image processor, CLIP mean/std, bicubic, 4 to
    16384 tokens of 28x28 pixels."""
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": 12845056,
        "merge_size": 2,
        "min_pixels": 3136,
        "patch_size": 14,
        "processor_class": "ColQwen2_5_Processor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "temporal_patch_size": 2,
    }, indent=2))


def _write_adapter(folder: Path, base: Path, base_name: str, *, seed: int, rank: int, alpha: int,
                   hidden: dict[str, int]) -> None:
    """A LoRA adapter as PEFT saves colpali-engine's: every decoder projection and the output
    projection, random non-zero A and B (a trained adapter's B is not zero)."""
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        (folder / name).write_bytes((base / name).read_bytes())
    h, m, kv = hidden["hidden"], hidden["intermediate"], hidden["kv"]
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, kv), "self_attn.v_proj": (h, kv),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (h, m), "mlp.up_proj": (h, m), "mlp.down_proj": (m, h)}
    targets = {f"model.layers.{i}.{module}": shapes[module] for i in range(hidden["layers"]) for module in LORA_MODULES}
    targets["custom_text_proj"] = (h, PROJECTION_DIM)
    generator = torch.Generator().manual_seed(seed + 3)
    state = {}
    for module, (fan_in, fan_out) in targets.items():
        state[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) / rank
        state[f"base_model.model.{module}.lora_B.weight"] = 0.1 * torch.randn(fan_out, rank, generator=generator)
    save_file(dict(sorted(state.items())), str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    (folder / "adapter_config.json").write_text(json.dumps({
        "alpha_pattern": {},
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": "gaussian",
        "lora_alpha": alpha,
        "lora_dropout": 0.1,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "target_modules": LORA_TARGETS,
        "task_type": "FEATURE_EXTRACTION",
        "use_dora": False,
        "use_rslora": False,
    }, indent=2))
