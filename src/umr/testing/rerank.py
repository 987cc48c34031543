"""Tiny, randomly initialised reranker checkpoints for tests, examples and benchmarks.

* :func:`write_tiny_qwen3vl_reranker`: a Qwen3-VL checkpoint laid out like
  ``Qwen/Qwen3-VL-Reranker-2B`` (its tokenizer lists Qwen's vision and chat tokens as
  ``additional_special_tokens``, as the real one does, so truncation keeps them).
  The same checkpoint is a Qwen3-VL-Instruct-style model for the zero-shot reranker
  (``family="zero-shot"``).
* :func:`write_tiny_qwen2vl_instruct`: a Qwen2-VL-Instruct-style generative MLLM for the
  zero-shot reranker.

Their vocabularies hold ``True`` / ``False`` and ``yes`` / ``no`` as single tokens.

All load through :func:`umr.rerank.load_reranker`. Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..models.registry import quiet_transformers
from .corpus import WORDS
from .gme import SPECIAL_TOKENS, build_tokenizer
from .qwen3vl import write_tiny_qwen3vl

#: answer words every tiny reranker vocabulary holds as single tokens
ANSWER_WORDS = ("yes", "no", "True", "False")

#: Qwen2-VL / Qwen3-VL's special tokens the real tokenizers list as ``additional_special_tokens``
ADDITIONAL_SPECIAL = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                      "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                      "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

#: Qwen2-VL-Instruct's chat template in its essentials (default system turn, images as vision
#: placeholders, text as is, the generation prompt), written for these fixtures.
QWEN2VL_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if loop.first and message.role != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for part in message.content %}"
    "{%- if part.type == 'image' or 'image' in part %}{{- '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif 'text' in part %}{{- part.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _list_special_tokens(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["additional_special_tokens"] = ADDITIONAL_SPECIAL
    path.write_text(json.dumps(config, indent=2))


def write_tiny_qwen3vl_reranker(folder: str | Path, *, seed: int = 0, text: dict | None = None,
                                vision: dict | None = None) -> Path:
    """A tiny random Qwen3-VL-Reranker checkpoint (name the folder ``...reranker...`` or load it
    with ``family="qwen3-vl-reranker"``); ``text`` / ``vision`` override the architecture as in
    :func:`umr.models.qwen3vl.write_tiny_qwen3vl` (e.g. a mid-sized model for benchmarks)."""
    folder = write_tiny_qwen3vl(folder, seed=seed, text=text, vision=vision, answer_words=ANSWER_WORDS)
    _list_special_tokens(folder)
    return folder


def write_tiny_qwen2vl_instruct(folder: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """A tiny random Qwen2-VL-Instruct-style checkpoint (transformers' current layout)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed, vocab_size, extra_texts=[w for w in ANSWER_WORDS for _ in range(50)])
    missing = [w for w in ANSWER_WORDS if tokenizer.token_to_id(w) is None]
    if missing:
        raise ValueError(f"vocab_size={vocab_size} is too small to hold {missing} as single tokens")
    ids = {t: tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "unk_token": None, "bos_token": None, "model_max_length": 32768, "padding_side": "left",
        "clean_up_tokenization_spaces": False, "errors": "replace", "split_special_tokens": False,
        "additional_special_tokens": ADDITIONAL_SPECIAL}, indent=2))
    (folder / "chat_template.jinja").write_text(QWEN2VL_CHAT_TEMPLATE)
    config = Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=32768,
                         rms_norm_eps=1e-6, initializer_range=0.1, tie_word_embeddings=True,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3, initializer_range=0.1),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    with quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
    generation = folder / "generation_config.json"
    if generation.exists():
        generation.unlink()
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 200704, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}, indent=2))
    return folder



def write_tiny_cross_encoder(folder: str | Path, *, seed: int = 0) -> Path:
    """A tiny random BERT cross-encoder (one label) saved as sentence-transformers saves one."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)),
                                *".,?!:0123456789"]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, num_labels=1)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CrossEncoder(str(folder), max_length=128).save(str(folder))
    return folder


#: LLaVA-NeXT (Mistral)'s chat template in its essentials: ``[INST] <image>\n... [/INST]``
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '[INST] ' }}"
    "{%- for part in message.content %}"
    "{%- if part.type == 'image' %}{{- '<image>\\n' }}{%- elif part.type == 'text' %}{{- part.text }}{%- endif %}"
    "{%- endfor %}{{- ' [/INST]' }}"
    "{%- else %}{%- for part in message.content %}{{- part.text }}{%- endfor %}{{- '</s>' }}{%- endif %}"
    "{%- endfor %}"
)


def write_tiny_llava_next(folder: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """A tiny random LLaVA-NeXT (CLIP vision tower + Mistral decoder, any-resolution tiles of 28 px)."""
    import torch
    from tokenizers import AddedToken
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, MistralConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(seed, vocab_size, extra_texts=[w for w in ANSWER_WORDS for _ in range(50)])
    specials = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    ids = {t: tokenizer.token_to_id(t) for t in specials}
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>", "image_token": "<image>", "model_max_length": 32768, "padding_side": "left",
        "clean_up_tokenization_spaces": False}, indent=2))
    (folder / "chat_template.jinja").write_text(LLAVA_NEXT_CHAT_TEMPLATE)
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=28, patch_size=14, projection_dim=32),
        text_config=MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=4096,
                                  bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"],
                                  sliding_window=None),
        image_token_index=ids["<image>"], image_grid_pinpoints=pinpoints, vision_feature_layer=-2,
        vision_feature_select_strategy="default", tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():  # the image-newline vector starts empty: give it values
        model.model.image_newline.normal_(0.0, 0.5)
    with quiet_transformers():
        model.save_pretrained(folder, safe_serialization=True)
    generation = folder / "generation_config.json"
    if generation.exists():
        generation.unlink()
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "LlavaNextImageProcessor", "processor_class": "LlavaNextProcessor",
        "size": {"shortest_edge": 28}, "crop_size": {"height": 28, "width": 28}, "image_grid_pinpoints": pinpoints,
        "do_resize": True, "do_center_crop": True, "do_rescale": True, "do_normalize": True, "do_pad": True,
        "do_convert_rgb": True, "resample": 3, "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}, indent=2))
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaNextProcessor", "patch_size": 14, "vision_feature_select_strategy": "default",
        "num_additional_image_tokens": 1, "image_token": "<image>"}, indent=2))
    return folder
