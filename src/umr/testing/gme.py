"""A tiny, randomly initialised GME-style checkpoint for tests, examples and benchmarks.

:func:`write_tiny_gme` writes a folder laid out like ``Alibaba-NLP/gme-Qwen2-VL-2B-Instruct``:
a flat (pre-v5) ``config.json`` for ``Qwen2VLForConditionalGeneration``, weights under the old
names (``model.layers.*``, ``visual.*``, ``lm_head.*``), a byte-level BPE tokenizer trained
offline with Qwen2-VL's special tokens, and ``preprocessor_config.json``. It loads through
``umr.load_model(folder)`` exactly like the real checkpoint. Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ..models.registry import quiet_transformers
from .corpus import synthetic_sentences

#: Qwen2-VL's added tokens, in the real checkpoint's order.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

#: Qwen2's pre-tokenisation pattern (digits one by one, letters with one leading non-letter, ...).
_QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")


#: The default tiny architecture (about 130k parameters, lm_head included).
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, mrope_section=[1, 1, 2])
TINY_VISION = dict(depth=2, embed_dim=32, num_heads=2, mlp_ratio=2)



def build_tokenizer(seed: int = 0, vocab_size: int = 512, extra_texts: Sequence[str] = ()):
    """A byte-level BPE with Qwen2's normaliser, pre-tokeniser and special tokens, trained on the
    synthetic corpus plus ``extra_texts`` (words a fixture needs as single tokens)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator([*synthetic_sentences(seed), *extra_texts], trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def write_tokenizer_files(folder: Path, tokenizer, *, model_max_length: int, **settings: Any) -> dict[str, int]:
    """``tokenizer.json`` and a Qwen2 ``tokenizer_config.json`` (plus ``settings``) in ``folder``;
    returns the ids of :data:`SPECIAL_TOKENS`."""
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "bos_token": None,
        "model_max_length": model_max_length,
        **settings,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
    }, indent=2))
    return {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}


def save_jittered(model, folder: Path, *, seed: int, jitter: Callable[[str, Any, Any], None]) -> None:
    """Save a freshly initialised model after ``jitter(name, parameter, generator)`` has moved the
    parameters initialisation leaves uninformative (norm weights all 1, ...), without the
    generation config (an embedding checkpoint has none)."""
    import torch

    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            jitter(name, param, generator)
    with quiet_transformers():  # no "Writing model shards" bar
        model.save_pretrained(folder, safe_serialization=True)
    generation = folder / "generation_config.json"
    if generation.exists():
        generation.unlink()


def flat_text_config(text: dict[str, Any], vocab_size: int, ids: dict[str, int], *,
                     initializer_range: float) -> dict[str, Any]:
    """The decoder half of a flat (transformers 4.x era) Qwen2-VL / Qwen2.5-VL config.json, as the
    real GME and ColQwen checkpoints write it: ``text`` is the architecture with its
    ``mrope_section``, ``ids`` the special tokens' ids."""
    text = dict(text)
    mrope_section = text.pop("mrope_section")
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    if sum(mrope_section) * 2 != head_dim:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    return {
        "vocab_size": vocab_size,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope_section},
        "hidden_act": "silu",
        "initializer_range": initializer_range,
        "tie_word_embeddings": True,
        "use_sliding_window": False,
        "sliding_window": 32768,
        "max_window_layers": text["num_hidden_layers"],
        "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "torch_dtype": "float32",
        **text,
    }


def write_tiny_gme(folder: str | Path, *, seed: int = 0, text: dict[str, Any] | None = None,
                   vision: dict[str, Any] | None = None, vocab_size: int = 512,
                   initializer_range: float = 0.1, legacy_layout: bool = True) -> Path:
    """Write a tiny random GME (Qwen2-VL) checkpoint to ``folder`` and return the folder.

    ``text`` / ``vision`` override the architecture (e.g. ``text=dict(hidden_size=512,
    num_hidden_layers=4, ...)`` for a mid-sized benchmark model). With ``legacy_layout`` the
    config and weight names follow the real (transformers 4.x era) GME checkpoint.
    """
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(seed, vocab_size)
    # padding_side as Qwen2-VL ships it; GME pads on the right regardless
    ids = write_tokenizer_files(folder, tokenizer, model_max_length=32768, padding_side="left")

    t = {**TINY_TEXT, **(text or {})}
    v = {**TINY_VISION, **(vision or {})}
    flat = {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        **flat_text_config(t, tokenizer.get_vocab_size(), ids, initializer_range=initializer_range),
        "vision_config": {
            "in_chans": 3, "in_channels": 3, "hidden_act": "quick_gelu", "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2,
            "hidden_size": t["hidden_size"], "initializer_range": initializer_range, **v,
        },
    }
    config = Qwen2VLConfig(**json.loads(json.dumps(flat)))
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()

    def jitter(name, param, generator):  # RMS/LayerNorm weights start at 1: jitter them so they matter
        if name.endswith("norm.weight") or ".norm" in name or "ln_q" in name:
            param.add_(0.1 * torch.randn(param.shape, generator=generator))

    save_jittered(model, folder, seed=seed, jitter=jitter)

    if legacy_layout:
        (folder / "config.json").write_text(json.dumps(flat, indent=2))
        weights = folder / "model.safetensors"
        state = load_file(str(weights))
        renamed = {}
        for key, value in state.items():
            if key.startswith("model.language_model."):
                key = "model." + key[len("model.language_model."):]
            elif key.startswith("model.visual."):
                key = key[len("model."):]
            renamed[key] = value.contiguous()
        if "lm_head.weight" not in renamed:
            renamed["lm_head.weight"] = renamed["model.embed_tokens.weight"].clone()
        save_file(dict(sorted(renamed.items())), str(weights), metadata={"format": "pt"})

    (folder / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2VLProcessor",
    }, indent=2))
    return folder
