"""A tiny, randomly initialised Qwen3-VL checkpoint for tests, examples and benchmarks.

:func:`write_tiny_qwen3vl` writes a folder laid out like ``Qwen/Qwen3-VL-Embedding-2B``: a
``Qwen3VLForConditionalGeneration`` config and weights (the language-model head included, tied
to the embeddings as in the 2B model, so a reranker can read its ``yes`` / ``no`` rows), a
byte-level BPE tokenizer trained offline with Qwen's special tokens and single-token ``yes`` and
``no``, a Qwen3-VL style chat template and ``preprocessor_config.json`` (patch 16, merge 2, mean
and std 0.5). It loads through ``umr.load_model(folder)``. Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .gme import build_tokenizer, save_jittered, write_tokenizer_files

#: The default tiny architecture: 3 decoder layers, DeepStack into the first two, a 3-block vision tower.
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, mrope_section=[2, 1, 1])
TINY_VISION = dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=64,
                   deepstack_visual_indexes=[0, 1])

#: The reranker's answer words, trained into the vocabulary as single tokens.
ANSWER_WORDS = ("yes", "no")

#: Qwen3-VL's chat template in its essentials (system text parts, then each turn; images and videos
#: as vision placeholders, text as is; the generation prompt), written for these fixtures.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}"
    "{%- if part.type == 'image' or 'image' in part or 'image_url' in part %}"
    "{%- if message.role == 'system' %}{{- raise_exception('System message cannot contain images.') }}{%- endif %}"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif part.type == 'video' or 'video' in part %}{{- '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part.text }}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def write_tiny_qwen3vl(folder: str | Path, *, seed: int = 0, text: dict[str, Any] | None = None,
                       vision: dict[str, Any] | None = None, vocab_size: int = 512,
                       initializer_range: float = 0.1, legacy_layout: bool = True,
                       answer_words: tuple[str, ...] = ANSWER_WORDS) -> Path:
    """Write a tiny random Qwen3-VL checkpoint to ``folder`` and return the folder.

    ``answer_words`` are trained into the vocabulary as single tokens (rerankers' answers).
    ``text`` / ``vision`` override the architecture (e.g. a mid-sized model for benchmarks). With
    ``legacy_layout`` config.json is written as the real checkpoints (transformers 4.57) write it:
    ``rope_scaling`` and ``rope_theta`` in the text config, no vision rope entry, ``torch_dtype``.
    """
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    answers = [word for word in answer_words for _ in range(50)]
    tokenizer = build_tokenizer(seed, vocab_size, extra_texts=answers)
    missing = [w for w in answer_words if tokenizer.token_to_id(w) is None]
    if missing:
        raise ValueError(f"vocab_size={vocab_size} is too small to hold {missing} as single tokens")
    ids = write_tokenizer_files(folder, tokenizer, model_max_length=262144)
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)

    t = {**TINY_TEXT, **(text or {})}
    v = {**TINY_VISION, **(vision or {})}
    mrope_section = t.pop("mrope_section")
    if sum(mrope_section) * 2 != t["head_dim"]:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim/2 = {t['head_dim'] // 2}")
    config = Qwen3VLConfig(
        text_config={**t, "vocab_size": tokenizer.get_vocab_size(), "max_position_embeddings": 262144,
                     "rms_norm_eps": 1e-6, "hidden_act": "silu", "attention_bias": False,
                     "initializer_range": initializer_range, "tie_word_embeddings": True,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0,
                                         "mrope_section": mrope_section, "mrope_interleaved": True}},
        vision_config={"hidden_act": "gelu_pytorch_tanh", "in_channels": 3, "patch_size": 16,
                       "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": t["hidden_size"],
                       "initializer_range": initializer_range, **v},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen3VLForConditionalGeneration(config).eval()

    def jitter(name, param, generator):  # RMS/LayerNorm weights start at 1 and the position table small
        if "norm" in name and name.endswith("weight"):
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
        elif name.endswith("pos_embed.weight"):
            param.normal_(0.0, 0.5, generator=generator)

    save_jittered(model, folder, seed=seed, jitter=jitter)
    if legacy_layout:
        _write_legacy_config(folder / "config.json")
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen3VLProcessor",
    }, indent=2))
    return folder


def _write_legacy_config(path: Path) -> None:
    config = json.loads(path.read_text())
    text = config["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope.pop("rope_theta")
    text["rope_scaling"] = rope
    config["vision_config"].pop("rope_parameters", None)
    config["torch_dtype"] = config.pop("dtype", "float32")
    config["transformers_version"] = "4.57.3"
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
