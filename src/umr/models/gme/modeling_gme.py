"""GME (General Multimodal Embedder) on Qwen2-VL / Qwen2.5-VL.

The vector of an item is the final hidden state of the last token of its message
(``... <|im_start|>assistant\\n<|endoftext|>``), L2-normalised. The text decoder runs with
plain sequential positions ``0..L-1`` on all three M-RoPE sections, causal attention and right
padding, as GME's reference code does (it calls the decoder with ``position_ids=None`` in the
transformers versions it was written for). That makes every row of a batch independent of the
others, so text-only, image-only and fused items share batches freely and each vector equals
the item embedded alone.

Only the vision tower and the text decoder are loaded (no ``lm_head``). Speed on CPU comes
from batches of similar length (the base class sorts by :meth:`GmeEmbedder._cost`), running
the vision tower once per batch on real images only (its patch embedding as one matmul), and
computing only the pooled token in the decoder's last layer.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import torch

from ...types import Item, ItemError
from ..base import Embedder
from ..registry import ModelNotAvailable
from .processing_gme import GmeProcessor, ProcessedItem

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' load report (the unused ``lm_head`` is expected)."""
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


class GmeEmbedder(Embedder):
    """GME embeddings for text, images and both, in one vector space."""

    batch_size = 32
    #: padded tokens (items x longest sequence) per forward pass
    cost_budget = 8192

    def __init__(self, model, processor: GmeProcessor, *, name: str = "gme", device: str = "cpu"):
        self.model = model
        self.processor = processor
        self.name = name
        self.device = torch.device(device)
        config = model.config
        text_config = getattr(config, "text_config", config)
        self.dim = int(text_config.hidden_size)
        self.image_token_id = int(config.image_token_id)
        pad = processor.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)
        self._fast_decoder = _supports_fast_decoder(model)
        _speed_up_patch_embed(model)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int = 1800, attn_implementation: str = "sdpa") -> "GmeEmbedder":
        """Load a GME checkpoint folder (Qwen2-VL or Qwen2.5-VL) for embedding.

        ``dtype`` defaults to ``float32``; ``bfloat16`` is much faster on CPUs with AMX/AVX512-BF16
        but is opt-in. ``min_image_tokens``/``max_image_tokens`` bound the tokens per image
        (GME's defaults: 256 and 1280).
        """
        from transformers import AutoConfig, AutoModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(f"{folder}: no config.json, not a GME checkpoint folder")
        if dtype is not None and str(dtype) not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(sorted(_DTYPES))}, not {dtype!r}")
        torch_dtype = _DTYPES[str(dtype)] if dtype is not None else torch.float32
        try:
            with _quiet_transformers():
                config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
                model, info = AutoModel.from_pretrained(str(folder), config=config, dtype=torch_dtype,
                                                        attn_implementation=attn_implementation,
                                                        local_files_only=True, output_loading_info=True)
        except OSError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelNotAvailable(f"{folder}: cannot load the GME weights: {first}") from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # never embed with randomly initialised tensors
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ModelNotAvailable(f"{folder}: the checkpoint lacks {len(missing)} tensor(s) the model needs "
                                    f"({shown}); is it a complete Qwen2-VL/GME checkpoint?")
        model.to(device).eval()
        if not hasattr(model, "language_model") or not hasattr(model, "get_image_features"):
            raise ModelNotAvailable(f"{folder}: {type(model).__name__} is not a Qwen2-VL style model")
        processor = GmeProcessor.from_pretrained(
            folder, image_token_id=config.image_token_id,
            min_image_tokens=256 if min_image_tokens is None else min_image_tokens,
            max_image_tokens=1280 if max_image_tokens is None else max_image_tokens,
            max_length=max_length)
        return cls(model, processor, name=folder.name, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.embed_tokens.weight.dtype

    # -- the Embedder hooks ----------------------------------------------------------------------

    def _cost(self, item: Item) -> int:
        return self.processor.estimate_tokens(item)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        processed = []
        for i, item in enumerate(items):
            try:
                processed.append(self.processor.process(item))
            except ItemError as exc:
                raise exc.at(index=i) from None
        return self.forward(processed)

    # -- the model -------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, processed: list[ProcessedItem]) -> torch.Tensor:
        """Last-token hidden states ``(len(processed), dim)`` (not normalised)."""
        lengths = torch.tensor([len(p.input_ids) for p in processed])
        batch, width = len(processed), int(lengths.max())
        input_ids = torch.full((batch, width), self.pad_token_id, dtype=torch.long)
        for row, p in enumerate(processed):
            input_ids[row, : len(p.input_ids)] = torch.tensor(p.input_ids, dtype=torch.long)
        input_ids = input_ids.to(self.device)

        embeds = self.model.get_input_embeddings()(input_ids)
        with_image = [p for p in processed if p.pixel_values is not None]
        if with_image:
            pixel_values = torch.from_numpy(np.concatenate([p.pixel_values for p in with_image]))
            grid = torch.tensor([p.grid_thw for p in with_image], dtype=torch.long, device=self.device)
            features = self.model.get_image_features(pixel_values.to(self.device), image_grid_thw=grid)
            features = torch.cat(list(features.pooler_output)).to(embeds.dtype)
            embeds[input_ids == self.image_token_id] = features

        return self._decode(embeds, lengths.to(self.device)).float()

    def _decode(self, embeds: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Final hidden state of each row's last real token, positions ``0..L-1`` in every row.

        All layers but the last run as transformers defines them; the last one only computes the
        query, attention output and MLP of the one token that is pooled (keys and values still
        cover the whole row), which is what the full layer computes for that token.
        """
        lm = self.model.language_model
        batch, width, _ = embeds.shape
        rows = torch.arange(batch, device=embeds.device)
        last = lengths - 1
        position_ids = torch.arange(width, device=embeds.device).view(1, 1, -1).expand(3, batch, -1)
        padded = bool((lengths < width).any())
        if not self._fast_decoder:
            mask = (torch.arange(width, device=embeds.device)[None, :] < lengths[:, None]).long() if padded else None
            hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                        use_cache=False).last_hidden_state
            return hidden[rows, last]

        keys_valid = torch.arange(width, device=embeds.device)[None, :] < lengths[:, None]  # (B, L)
        mask = None  # no padding: SDPA's causal kernel
        if padded:
            causal = torch.ones(width, width, dtype=torch.bool, device=embeds.device).tril()
            mask = (causal[None, :, :] & keys_valid[:, None, :])[:, None]  # (B, 1, L, L)
        cos, sin = lm.rotary_emb(embeds, position_ids)
        hidden = embeds
        for layer in lm.layers[:-1]:
            hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), use_cache=False)
            if isinstance(hidden, tuple):
                hidden = hidden[0]

        layer = lm.layers[-1]
        attn = layer.self_attn
        head_dim = attn.head_dim
        normed = layer.input_layernorm(hidden)
        query = attn.q_proj(normed[rows, last]).view(batch, 1, -1, head_dim).transpose(1, 2)
        key = attn.k_proj(normed).view(batch, width, -1, head_dim).transpose(1, 2)
        value = attn.v_proj(normed).view(batch, width, -1, head_dim).transpose(1, 2)
        cos_q, sin_q = cos[rows, last][:, None, None], sin[rows, last][:, None, None]
        query = query * cos_q + _rotate_half(query) * sin_q
        key = key * cos[:, None] + _rotate_half(key) * sin[:, None]
        groups = query.shape[1] // key.shape[1]
        if groups > 1:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
        # the pooled token sees every real token of its row (it is the last one)
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=keys_valid[:, None, None, :] if padded else None, scale=attn.scaling)
        out = attn.o_proj(out.transpose(1, 2).reshape(batch, -1))
        pooled = hidden[rows, last] + out
        pooled = pooled + layer.mlp(layer.post_attention_layernorm(pooled))
        return lm.norm(pooled)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _PatchEmbedAsMatmul(torch.nn.Module):
    """Qwen2-VL's patch embedding (a Conv3d whose stride equals its kernel) as one matmul.

    Same weights and the same dot products; oneDNN's 3-D convolution is several times slower
    on CPU than a plain GEMM for this shape.
    """

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        self.weight = conv.weight  # shared: (embed, C, T, P, P)
        self.bias = conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, T, P, P)
        out = torch.nn.functional.linear(x.reshape(x.shape[0], -1), self.weight.reshape(self.weight.shape[0], -1),
                                         self.bias)
        return out.view(x.shape[0], -1, 1, 1, 1)


def _supports_fast_decoder(model) -> bool:
    """The hand-written last layer covers Qwen2-style decoders without sliding windows."""
    lm = model.language_model
    config = lm.config
    if getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None):
        return False
    layer = lm.layers[-1]
    attn = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")
    return (attn is not None and all(hasattr(attn, n) for n in needed) and hasattr(layer, "mlp")
            and hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
            and hasattr(lm, "rotary_emb") and hasattr(lm, "norm"))


def _speed_up_patch_embed(model) -> None:
    embed = getattr(getattr(model, "visual", None), "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if isinstance(conv, torch.nn.Conv3d) and tuple(conv.kernel_size) == tuple(conv.stride) \
            and conv.padding == (0, 0, 0) and conv.groups == 1:
        embed.proj = _PatchEmbedAsMatmul(conv)
