"""GME (General Multimodal Embedder) on Qwen2-VL / Qwen2.5-VL.

The vector of an item is the final hidden state of the last token of its message
(``... <|im_start|>assistant\\n<|endoftext|>``), L2-normalised. The text decoder runs with
plain sequential positions ``0..L-1`` on all three M-RoPE sections, causal attention and right
padding, as GME's reference code does (it calls the decoder with ``position_ids=None`` in the
transformers versions it was written for). That makes every row of a batch independent of the
others, so text-only, image-only and fused items share batches freely and each vector equals
the item embedded alone.

Only the vision tower and the text decoder are loaded (no ``lm_head``). Speed on CPU comes
from running the vision tower once per batch on real images only (its patch embedding as one
matmul), and packing the sequences of a batch back to back in the decoder (attention per sequence, no padding
at all), computing only the pooled token in its last layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...types import Item
from ..base import Embedder, Trainable, resolve_dtype, tokenizer_spans
from ..checkpoints import load_checkpoint
from ..registry import ModelNotAvailable
from .processing_gme import GmeProcessor, ProcessedItem





class GmeEmbedder(Embedder, Trainable):
    """GME embeddings for text, images and both, in one vector space."""

    batch_size = 32
    #: padded tokens (items x longest sequence) per forward pass
    cost_budget = 8192
    #: LoRA on the LLM's attention and MLP projections, as GME trains
    lora_targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

    def __init__(self, model, processor: GmeProcessor, *, name: str = "gme", device: str = "cpu"):
        self.model = model
        self.processor = processor
        self.name = name
        self.device = torch.device(device)
        config = model.config
        text_config = getattr(config, "text_config", config)
        self.dim = int(text_config.hidden_size)
        self.image_token_id = int(config.image_token_id)
        self._fast_decoder = _supports_fast_decoder(model)
        _speed_up_patch_embed(model)

    # -- loading --------------------------------------------------------------------------------

    def vector_options(self) -> dict:
        p = self.processor
        return {"dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                "min_image_tokens": p.min_image_tokens, "max_image_tokens": p.max_image_tokens,
                "max_length": p.max_length}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int = 1800, attn_implementation: str = "sdpa") -> "GmeEmbedder":
        """Load a GME checkpoint folder (Qwen2-VL or Qwen2.5-VL) for embedding.

        ``dtype`` defaults to ``float32``; ``bfloat16`` is much faster on CPUs with AMX/AVX512-BF16
        but is opt-in. ``min_image_tokens``/``max_image_tokens`` bound the tokens per image
        (GME's defaults: 256 and 1280).
        """
        from transformers import AutoModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(f"{folder}: no config.json, not a GME checkpoint folder")
        torch_dtype = resolve_dtype(dtype)
        # a bound left unset follows the one given (max 64 alone means 64 at most, fewer allowed)
        if min_image_tokens is None:
            min_image_tokens = 256 if max_image_tokens is None else min(256, int(max_image_tokens))
        if max_image_tokens is None:
            max_image_tokens = max(1280, int(min_image_tokens))
        min_image_tokens, max_image_tokens = int(min_image_tokens), int(max_image_tokens)
        if not 1 <= min_image_tokens <= max_image_tokens:
            raise ValueError(f"need 1 <= min_image_tokens <= max_image_tokens, got {min_image_tokens} "
                             f"and {max_image_tokens}")
        config, model = load_checkpoint(AutoModel, folder, what="a complete Qwen2-VL/GME checkpoint",
                                        dtype=torch_dtype, attn_implementation=attn_implementation)
        model.to(device).eval()
        if not hasattr(model, "language_model") or not hasattr(model, "get_image_features"):
            raise ModelNotAvailable(f"{folder}: {type(model).__name__} is not a Qwen2-VL style model")
        processor = GmeProcessor.from_pretrained(
            folder, image_token_id=config.image_token_id,
            min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens, max_length=max_length)
        return cls(model, processor, name=folder.name, device=device)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.embed_tokens.weight.dtype

    # -- the Embedder hooks ----------------------------------------------------------------------

    def _cost(self, item: Item) -> int:
        return self.processor.estimate_tokens(item)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        return self.pooled_states(self._each_item(items, self.processor.process))

    # -- training (umr.train) ----------------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(str(folder))

    def text_window(self) -> int:
        """``max_length`` less the candidate prompt's own tokens (system turn, roles, ``<|endoftext|>``)."""
        return self.processor.max_length - self.processor.estimate_tokens(Item.candidate(text=""))

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.processor.tokenizer, text)

    # -- the model -------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, processed: list[ProcessedItem]) -> torch.Tensor:
        """Last-token hidden states ``(len(processed), dim)`` (not normalised)."""
        return self.pooled_states(processed)

    def pooled_states(self, processed: list[ProcessedItem]) -> torch.Tensor:
        """:meth:`forward` with gradients (fine-tuning runs it through ``training_forward``)."""
        lengths = [len(p.input_ids) for p in processed]
        # all sequences back to back: no padding anywhere
        input_ids = torch.tensor([t for p in processed for t in p.input_ids], dtype=torch.long, device=self.device)
        embeds = self.model.get_input_embeddings()(input_ids)  # (T, H)
        with_image = [p for p in processed if p.pixel_values is not None]
        if with_image:
            pixel_values = torch.from_numpy(np.concatenate([p.pixel_values for p in with_image]))
            grid = torch.tensor([p.grid_thw for p in with_image], dtype=torch.long, device=self.device)
            features = self.model.get_image_features(pixel_values.to(self.device), image_grid_thw=grid)
            embeds[input_ids == self.image_token_id] = torch.cat(list(features.pooler_output)).to(embeds.dtype)
        if self._fast_decoder:
            return self._decode_packed(embeds, lengths).float()
        return self._decode_padded(embeds, lengths).float()

    def _decode_padded(self, embeds: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """transformers' decoder on right-padded rows, positions ``0..L-1`` in every row."""
        lm = self.model.language_model
        batch, width = len(lengths), max(lengths)
        padded = embeds.new_zeros(batch, width, embeds.shape[-1])
        mask = torch.zeros(batch, width, dtype=torch.long, device=embeds.device)
        start = 0
        for row, n in enumerate(lengths):
            padded[row, :n] = embeds[start: start + n]
            mask[row, :n] = 1
            start += n
        position_ids = torch.arange(width, device=embeds.device).view(1, 1, -1).expand(3, batch, -1)
        hidden = lm(inputs_embeds=padded, attention_mask=mask if min(lengths) < width else None,
                    position_ids=position_ids, use_cache=False).last_hidden_state
        last = torch.tensor(lengths, device=embeds.device) - 1
        return hidden[torch.arange(batch, device=embeds.device), last]

    def _decode_packed(self, embeds: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """The decoder on sequences packed back to back, returning each one's last-token state.

        Uses the decoder's own modules (norms, projections, MLPs, rotary tables); attention runs
        per sequence with SDPA's causal kernel, so no token attends across sequences or to padding,
        and every sequence has positions ``0..n-1``. The last layer only computes the pooled
        token (its keys and values still cover the whole sequence).
        """
        lm = self.model.language_model
        device = embeds.device
        spans, start = [], 0
        for n in lengths:
            spans.append((start, start + n))
            start += n
        total = start
        last = torch.tensor([e - 1 for _, e in spans], device=device)
        positions = torch.cat([torch.arange(n, device=device) for n in lengths])
        cos, sin = lm.rotary_emb(embeds[None], positions.view(1, 1, -1).expand(3, 1, -1))
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # (T, 1, head_dim): broadcast over heads
        hidden = embeds
        n_layers = len(lm.layers)
        for index, layer in enumerate(lm.layers):
            attn = layer.self_attn
            head_dim = attn.head_dim
            final = index == n_layers - 1
            normed = layer.input_layernorm(hidden)
            query = attn.q_proj(normed[last] if final else normed)
            query = query.view(query.shape[0], -1, head_dim)
            key = attn.k_proj(normed).view(total, -1, head_dim)
            value = attn.v_proj(normed).view(total, -1, head_dim)
            q_cos, q_sin = (cos[last], sin[last]) if final else (cos, sin)
            query = query * q_cos + _rotate_half(query) * q_sin
            key = key * cos + _rotate_half(key) * sin
            groups = query.shape[1] // key.shape[1]
            outputs = []
            for row, (s, e) in enumerate(spans):
                k = key[s:e].transpose(0, 1)
                v = value[s:e].transpose(0, 1)
                if groups > 1:
                    k = k.repeat_interleave(groups, dim=0)
                    v = v.repeat_interleave(groups, dim=0)
                q = (query[row: row + 1] if final else query[s:e]).transpose(0, 1)
                # the pooled (last) token sees its whole sequence; otherwise causal
                out = torch.nn.functional.scaled_dot_product_attention(
                    q[None], k[None], v[None], is_causal=not final, scale=attn.scaling)
                outputs.append(out[0].transpose(0, 1).reshape(q.shape[1], -1))
            attended = attn.o_proj(torch.cat(outputs))
            hidden = (hidden[last] if final else hidden) + attended
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return lm.norm(hidden)


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
