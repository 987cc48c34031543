"""Tiny, randomly initialised CLIP / SigLIP / UniIR CLIP-SF checkpoints for tests and examples.

* :func:`write_tiny_clip` writes a Hugging Face CLIP (or SigLIP) folder: ``config.json``,
  ``model.safetensors``, a tokenizer trained offline (a BPE ``tokenizer.json`` for CLIP, a
  SentencePiece ``spiece.model`` for transformers' ``SiglipTokenizer`` for SigLIP, as Google
  ships it), ``preprocessor_config.json``.
* :func:`write_tiny_uniir_clip_sf` writes such a CLIP folder and drops into it a UniIR-style
  ``clip_sf_tiny.pth``: ``torch.save({"model": state_dict, "epoch": 0})`` with UniIR's
  ``clip_model.``-prefixed OpenAI CLIP names and *other* random weights than the folder's, so
  a test can tell which were used.

Everything loads through ``umr.load_model(folder)``. Same arguments, same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..models.clip_sf.modeling_clip_sf import hf_to_uniir
from .corpus import synthetic_sentences


TINY_CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=16)
TINY_CLIP_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8)



def build_tokenizer(kind: str = "clip", seed: int = 0, vocab_size: int = 200):
    """A lower-casing BPE; CLIP-style ``<|startoftext|> ... <|endoftext|>`` or SigLIP-style ``... </s>``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    specials = ["<|startoftext|>", "<|endoftext|>"] if kind == "clip" else ["<pad>", "</s>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<|endoftext|>" if kind == "clip" else "<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    alphabet = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789.,:;!?'-"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=specials, initial_alphabet=alphabet)
    tokenizer.train_from_iterator(synthetic_sentences(seed), trainer=trainer)
    if kind == "clip":
        sot, eot = tokenizer.token_to_id("<|startoftext|>"), tokenizer.token_to_id("<|endoftext|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", sot), ("<|endoftext|>", eot)])
    else:
        eos = tokenizer.token_to_id("</s>")
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
    return tokenizer


def write_tiny_clip(folder: str | Path, *, kind: str = "clip", seed: int = 0, text: dict[str, Any] | None = None,
                    vision: dict[str, Any] | None = None, projection_dim: int = 24, scale: float = 0.2) -> Path:
    """Write a tiny random CLIP (``kind="clip"``) or SigLIP (``kind="siglip"``) folder."""
    import torch
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(kind, seed)
    tokenizer.save(str(folder / "tokenizer.json"))
    t = {**TINY_CLIP_TEXT, **(text or {}), "vocab_size": tokenizer.get_vocab_size()}
    v = {**TINY_CLIP_VISION, **(vision or {})}
    if kind == "clip":
        ids = {k: tokenizer.token_to_id(k) for k in ("<|startoftext|>", "<|endoftext|>")}
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
            "model_max_length": t["max_position_embeddings"], "padding_side": "right"}, indent=2))
        t.update(bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|endoftext|>"],
                 pad_token_id=ids["<|endoftext|>"], hidden_act="quick_gelu")
        v.update(hidden_act="quick_gelu")
        config = CLIPConfig(text_config=t, vision_config=v, projection_dim=projection_dim)
        model_cls = CLIPModel
        pre = {"image_processor_type": "CLIPImageProcessor", "do_resize": True,
               "size": {"shortest_edge": v["image_size"]}, "do_center_crop": True,
               "crop_size": {"height": v["image_size"], "width": v["image_size"]},
               "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
               "image_mean": [0.48145466, 0.4578275, 0.40821073],
               "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "do_convert_rgb": True}
    elif kind == "siglip":
        # like google/siglip-*: a SentencePiece model read by transformers' SiglipTokenizer
        (folder / "tokenizer.json").unlink()
        vocab = _write_sentencepiece(folder / "spiece.model", seed)
        t["vocab_size"] = vocab
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "SiglipTokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
            "model_max_length": t["max_position_embeddings"], "do_lower_case": True}, indent=2))
        t.update(pad_token_id=1, eos_token_id=1)
        config = SiglipConfig(text_config=t, vision_config=v)
        model_cls = SiglipModel
        pre = {"image_processor_type": "SiglipImageProcessor", "do_resize": True,
               "size": {"height": v["image_size"], "width": v["image_size"]}, "do_rescale": True,
               "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.5, 0.5, 0.5],
               "image_std": [0.5, 0.5, 0.5], "resample": 3}
    else:
        raise ValueError(f"kind must be clip or siglip, not {kind!r}")
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    _randomise(model, seed, scale)
    model.save_pretrained(folder, safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    return folder


def _write_sentencepiece(path: Path, seed: int, vocab_size: int = 160) -> int:
    """Train a small unigram SentencePiece model offline (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2)."""
    import io

    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line.lower().rstrip(".?!") for line in synthetic_sentences(seed)]), model_writer=buffer,
        vocab_size=vocab_size, model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0,
        hard_vocab_limit=False, num_threads=1, minloglevel=2)
    path.write_bytes(buffer.getvalue())
    return spm.SentencePieceProcessor(model_proto=buffer.getvalue()).get_piece_size()


def _randomise(model, seed: int, scale: float) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("logit_scale") or name.endswith("logit_bias"):
                continue
            is_norm_weight = name.endswith(".weight") and ("norm" in name or "layrnorm" in name)
            param.copy_(1.0 + 0.5 * scale * noise if is_norm_weight else scale * noise)


def write_tiny_uniir_clip_sf(folder: str | Path, *, seed: int = 0, checkpoint_name: str = "clip_sf_tiny.pth",
                             **clip_options: Any) -> Path:
    """A tiny CLIP folder plus a UniIR-layout CLIP-SF checkpoint (different random weights) in it."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    folder = write_tiny_clip(folder, kind="clip", seed=seed, **clip_options)
    config = CLIPConfig.from_pretrained(str(folder))
    torch.manual_seed(seed + 100)
    trained = CLIPModel(config).eval()
    _randomise(trained, seed + 100, 0.2)
    state = hf_to_uniir(trained.state_dict())
    torch.save({"model": state, "epoch": 0}, str(folder / checkpoint_name))
    return folder
