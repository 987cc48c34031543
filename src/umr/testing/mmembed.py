"""A tiny, randomly initialised MM-Embed-style checkpoint for tests, examples and benchmarks.

:func:`write_tiny_mmembed` writes a folder laid out like ``nvidia/MM-Embed``: a LLaVA-NeXT
``config.json`` (``model_type: llava_next``, ``NVMMEmbedModel``, ``padding_side``,
``add_eos_token``, ``global_image_patch_only``, ``retriever``), weights under the real
checkpoint's names (``vision_tower.vision_model.*``, ``multi_modal_projector.*``,
``image_newline``, ``language_model.*``, ``latent_attention_model.*``), a LLaMA-style
(metaspace BPE) tokenizer trained offline whose ``<image>`` and ``<pad>`` ids sit just past
the embedding rows as in the real one (32000, 32001), and a LLaVA-NeXT
``preprocessor_config.json``. Since the real folder leaves NV-Embed's sizes to the separate
``retriever`` checkpoint, the tiny one carries them inline as ``retriever_config``.
It loads through ``umr.load_model(folder)``. Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.mmembed.modeling_mmembed import MMEmbedModel, read_settings
from .corpus import synthetic_sentences


TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0)
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                   image_size=56, patch_size=14, projection_dim=32)
TINY_LATENT = dict(num_latents_value=8, num_cross_heads=2, cross_dim_head=8)



def _training_text(seed: int) -> list[str]:
    # the prompt template's "Instruct: ...\nQuery:" shape, so newlines and colons are tokens
    return synthetic_sentences(seed) + ["Instruct: find it\nQuery: a dog"] * 5


def build_tokenizer(seed: int = 0, vocab_size: int = 300):
    """A LLaMA-style metaspace BPE: ``<unk>`` 0, ``<s>`` 1, ``</s>`` 2, then ``<image>``, ``<pad>`` last."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(_training_text(seed))) | set("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'\"-\n▁"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=alphabet)
    tokenizer.train_from_iterator(_training_text(seed), trainer=trainer)
    tokenizer.add_special_tokens([AddedToken("<image>", special=True, normalized=False),
                                  AddedToken("<pad>", special=True, normalized=False)])
    return tokenizer


def write_tiny_mmembed(folder: str | Path, *, seed: int = 0, text: dict[str, Any] | None = None,
                       vision: dict[str, Any] | None = None, latent: dict[str, Any] | None = None,
                       vocab_size: int = 300, add_eos_token: bool = True, scale: float = 0.2) -> Path:
    """Write a tiny random MM-Embed checkpoint to ``folder`` and return the folder.

    ``text`` / ``vision`` / ``latent`` override the LLM, the CLIP tower and the latent-attention
    sizes; ``scale`` is the weights' standard deviation (norm weights are 1 +- scale/2).
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed, vocab_size)
    rows = tokenizer.token_to_id("<image>")  # embedding rows: everything before <image>
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "padding_side": "right", "model_max_length": 4096, "clean_up_tokenization_spaces": False,
    }, indent=2))

    t = {**TINY_TEXT, **(text or {})}
    v = {**TINY_VISION, **(vision or {})}
    lat = {**TINY_LATENT, **(latent or {})}
    lat.setdefault("latent_dim", t["hidden_size"])
    lat.setdefault("hidden_dim", t["hidden_size"])
    size = v["image_size"]
    config = {
        "architectures": ["NVMMEmbedModel"],
        "model_type": "llava_next",
        "retriever": "nvidia/NV-Embed-v1",
        # umr extension: the real folder relies on the retriever checkpoint for these
        "retriever_config": {
            "model_type": "nvembed",
            "text_config": {"model_type": "bidir_mistral", "vocab_size": rows, "hidden_act": "silu", **t},
            "latent_attention_config": {"model_type": "latent_attention", "output_normalize": True, **lat},
        },
        "padding_side": "right",
        "add_eos_token": add_eos_token,
        "global_image_patch_only": True,
        "image_token_index": rows,
        "pad_token_id": rows + 1,
        "ignore_index": -100,
        "image_grid_pinpoints": [[size, size], [size, 2 * size], [2 * size, size], [2 * size, 2 * size]],
        "projector_hidden_act": "gelu",
        "vision_feature_layer": -2,
        "vision_feature_select_strategy": "default",
        "use_image_newline_parameter": True,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "text_config": {"model_type": "mistral", "vocab_size": rows + 64, **t},
        "vision_config": {"model_type": "clip_vision_model", "hidden_act": "quick_gelu",
                          "layer_norm_eps": 1e-5, **v},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "LlavaNextImageProcessor",
        "processor_class": "LlavaNextProcessor",
        "do_resize": True, "size": {"shortest_edge": size},
        "do_center_crop": True, "crop_size": {"height": size, "width": size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": True, "resample": 3,
        "image_grid_pinpoints": config["image_grid_pinpoints"],
    }, indent=2))

    settings = read_settings(folder)
    torch.manual_seed(seed)
    model = MMEmbedModel(settings)
    gen = torch.Generator().manual_seed(seed + 1)
    state = {}
    for name, param in model.state_dict().items():
        noise = torch.randn(param.shape, generator=gen)
        if "norm" in name and name.endswith("weight") or "layer_norm" in name and name.endswith("weight") \
                or name.endswith(("layrnorm.weight", "layernorm.weight")):
            value = 1.0 + 0.5 * scale * noise
        else:
            value = scale * noise
        state[name] = value.contiguous()
    save_file(dict(sorted(state.items())), str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder
