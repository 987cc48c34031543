"""CPU fast paths shared by the Qwen-VL families (GME on Qwen2-VL, Qwen3-VL-Embedding).

* :func:`speed_up_vision`: the vision tower's patch embedding (a Conv3d whose stride is its
  kernel) as one matmul, its attention with the rotary embedding applied without temporary
  concatenations and each image's output written in place, and Qwen2-VL's QuickGELU without
  its extra temporaries. Same weights, same dot products (outputs within float rounding).
* :func:`decode_packed`: the text decoder on a batch's sequences packed back to back (attention
  per sequence, no padding), only the pooled (last) token of each computed in the last layer,
  with optional DeepStack features (Qwen3-VL) added after the first layers; in training it can
  checkpoint each layer (the layers' parts are called directly, so only it can).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.utils.checkpoint
from torch.nn import functional as F


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` (the Llama/Qwen rotary embedding), without building
    ``rotate_half(x)``: each half gets its one product added or subtracted in place (the same
    roundings, since ``a + (-b)`` is ``a - b``)."""
    half = x.shape[-1] // 2
    out = x * cos
    out[..., :half] -= x[..., half:] * sin[..., :half]
    out[..., half:] += x[..., :half] * sin[..., half:]
    return out


class LinearPatchEmbed(torch.nn.Module):
    """A Conv3d whose stride equals its kernel, as one linear map over the flattened patch: the
    same weights and dot products, without oneDNN's slow 3-D convolution on CPU."""

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        # the checkpoint's parameters under the Conv3d's names (shared, not copied; saved as before)
        self.weight, self.bias = conv.weight, conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, C, T, P, P)
        weight = self.weight.flatten(1)  # (embed, C * T * P * P): a patch's own flattening order
        out = F.linear(x.reshape(x.shape[0], -1).to(weight.dtype), weight, self.bias)
        return out.view(x.shape[0], -1, 1, 1, 1)  # the Conv3d's output shape


class PerImageAttention(torch.nn.Module):
    """A Qwen-VL vision attention (one ``qkv``, one ``proj``) run image by image with SDPA.

    What transformers computes for SDPA/eager, minus its copies: the rotary embedding in
    float32 as transformers applies it, q/k/v as strided views, each image's output written
    into one preallocated buffer instead of a concatenation.
    """

    def __init__(self, attn: torch.nn.Module):
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj
        self.num_heads, self.scaling = int(attn.num_heads), float(attn.scaling)

    def forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                position_embeddings: tuple[torch.Tensor, torch.Tensor], **_) -> torch.Tensor:
        total = hidden_states.shape[0]
        qkv = self.qkv(hidden_states).view(total, 3, self.num_heads, -1)
        cos, sin = (t.unsqueeze(-2).float() for t in position_embeddings)
        query = rotate(qkv[:, 0].float(), cos, sin).to(qkv.dtype)
        key = rotate(qkv[:, 1].float(), cos, sin).to(qkv.dtype)
        value = qkv[:, 2]
        out = hidden_states.new_empty(total, self.num_heads, qkv.shape[-1])
        bounds = cu_seqlens.tolist()
        for s, e in zip(bounds[:-1], bounds[1:]):
            q, k, v = (t[s:e].transpose(0, 1)[None] for t in (query, key, value))
            out[s:e] = F.scaled_dot_product_attention(q, k, v, scale=self.scaling)[0].transpose(0, 1)
        return self.proj(out.view(total, -1))


class QuickGELU(torch.nn.Module):
    """``x * sigmoid(1.702 x)`` (transformers' QuickGELU) with one temporary instead of three
    when no gradient is needed; the same values either way."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            return x * torch.sigmoid(1.702 * x)
        return torch.sigmoid_(1.702 * x).mul_(x)


def speed_up_vision(visual: torch.nn.Module) -> Callable[[], None]:
    """Swap in the modules above where the vision tower has exactly the shapes they replace;
    returns what puts the originals back (for a load-time check that finds a difference)."""
    from transformers.activations import QuickGELUActivation

    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []

    def swap(parent: torch.nn.Module, name: str, new: torch.nn.Module) -> None:
        swapped.append((parent, name, getattr(parent, name)))
        setattr(parent, name, new)

    embed = getattr(visual, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if (isinstance(conv, torch.nn.Conv3d) and tuple(conv.kernel_size) == tuple(conv.stride)
            and conv.padding == (0, 0, 0) and conv.groups == 1):
        swap(embed, "proj", LinearPatchEmbed(conv))
    implementation = getattr(getattr(visual, "config", None), "_attn_implementation", "sdpa")
    for block in getattr(visual, "blocks", ()):
        attn = getattr(block, "attn", None)
        if implementation in ("sdpa", "eager") and all(hasattr(attn, n) for n in ("qkv", "proj", "num_heads",
                                                                                  "scaling")):
            swap(block, "attn", PerImageAttention(attn))
        mlp = getattr(block, "mlp", None)
        if isinstance(getattr(mlp, "act", None), QuickGELUActivation):
            swap(mlp, "act", QuickGELU())

    def restore() -> None:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original)

    return restore


def supports_packed(lm: torch.nn.Module, *, qk_norm: bool) -> bool:
    """:func:`decode_packed` covers Qwen2/Qwen3-style decoders without sliding windows."""
    config = lm.config
    if getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None):
        return False
    layer = lm.layers[-1]
    attn = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling") + (("q_norm", "k_norm") if qk_norm else ())
    return (attn is not None and all(hasattr(attn, n) for n in needed) and hasattr(layer, "mlp")
            and hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
            and hasattr(lm, "rotary_emb") and hasattr(lm, "norm"))


def decode_packed(lm: torch.nn.Module, embeds: torch.Tensor, lengths: list[int], positions: torch.Tensor, *,
                  visual: torch.Tensor | None = None, deepstack: list[torch.Tensor] = (),
                  checkpoint: bool = False, pooled: bool = True) -> torch.Tensor:
    """The decoder ``lm`` on sequences packed back to back; each sequence's last-token state, or
    with ``pooled=False`` every token's final state ``(T, H)`` (multi-vector models).

    ``embeds`` ``(T, H)`` holds the sequences of ``lengths`` in order, ``positions`` ``(3, 1, T)``
    their M-RoPE positions. Uses the decoder's own modules (norms, optional q/k norms,
    projections, MLPs, rotary tables); attention runs per sequence with SDPA's causal kernel, so
    no token attends across sequences or to padding. ``deepstack[i]`` (rows: the tokens where
    ``visual`` is set, in order) is added after layer ``i``. The last layer computes only the
    pooled tokens (their keys and values still cover the whole sequence).

    ``checkpoint``: when gradients are on, each layer keeps only its input and recomputes its
    activations in backward (``torch.utils.checkpoint``, non-reentrant): the layers' parts are
    called here, not through ``layer.forward``, so wrapping that forward would save nothing.
    """
    device = embeds.device
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    spans = list(zip(bounds[:-1], bounds[1:]))
    last = torch.tensor(bounds[1:], device=device) - 1
    cos, sin = lm.rotary_emb(embeds[None], positions)
    cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # (T, 1, head_dim): broadcast over heads
    # row of each image token in the DeepStack features
    visual_rank = torch.cumsum(visual.long(), 0) - 1 if deepstack else None
    recompute = checkpoint and torch.is_grad_enabled()
    hidden = embeds
    n_layers = len(lm.layers)
    for index, layer in enumerate(lm.layers):
        final = pooled and index == n_layers - 1
        run = functools.partial(_packed_layer, layer, spans=spans, pooled=last if final else None,
                                visual=visual, visual_rank=visual_rank,
                                deepstack=deepstack[index] if index < len(deepstack) else None)
        hidden = (torch.utils.checkpoint.checkpoint(run, hidden, cos, sin, use_reentrant=False) if recompute
                  else run(hidden, cos, sin))
    return lm.norm(hidden)


def _packed_layer(layer: torch.nn.Module, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                  spans: list[tuple[int, int]], pooled: torch.Tensor | None, visual: torch.Tensor | None,
                  visual_rank: torch.Tensor | None, deepstack: torch.Tensor | None) -> torch.Tensor:
    """One decoder layer of :func:`decode_packed`; with ``pooled`` (the last layer: each
    sequence's last row) only those rows are computed and returned."""
    attn = layer.self_attn
    head_dim = attn.head_dim
    total = hidden.shape[0]
    final = pooled is not None
    normed = layer.input_layernorm(hidden)
    query = attn.q_proj(normed[pooled] if final else normed)
    query = query.view(query.shape[0], -1, head_dim)
    key = attn.k_proj(normed).view(total, -1, head_dim)
    if hasattr(attn, "q_norm"):
        query, key = attn.q_norm(query), attn.k_norm(key)
    value = attn.v_proj(normed).view(total, -1, head_dim)
    query = rotate(query, cos[pooled], sin[pooled]) if final else rotate(query, cos, sin)
    key = rotate(key, cos, sin)
    grouped = query.shape[1] != key.shape[1]
    out = query.new_empty(query.shape)
    for row, (s, e) in enumerate(spans):
        k, v = key[s:e].transpose(0, 1)[None], value[s:e].transpose(0, 1)[None]
        rows = slice(row, row + 1) if final else slice(s, e)
        # the pooled (last) token sees its whole sequence; otherwise causal
        out[rows] = F.scaled_dot_product_attention(query[rows].transpose(0, 1)[None], k, v, is_causal=not final,
                                                   scale=attn.scaling, enable_gqa=grouped)[0].transpose(0, 1)
    hidden = (hidden[pooled] if final else hidden) + attn.o_proj(out.flatten(1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    if deepstack is not None:
        rows = visual[pooled] if final else visual
        ranks = visual_rank[pooled][rows] if final else visual_rank[rows]
        hidden[rows] = hidden[rows] + deepstack[ranks]
    return hidden
