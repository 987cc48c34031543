"""NV-Embed-v1's text half as plain PyTorch modules: Mistral-7B with **bidirectional** attention
and NV-Embed's **latent-attention pooling** (every token cross-attends to a learned latent array,
goes through a GEGLU feed-forward, and is mean-pooled over a pool mask).

MM-Embed (:mod:`.modeling_mmembed`) feeds it LLaVA-NeXT's projected image features; module and
parameter names follow the released checkpoint (``language_model.*``,
``latent_attention_model.*``) so its safetensors load by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# --------------------------------------------------------------------------------------
# configuration


class _FromConfig:
    """Settings read from a config section: the keys the dataclass names, ``None`` left at its default."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})


@dataclass
class MistralSettings(_FromConfig):
    """The parts of NV-Embed-v1's ``text_config`` (a Mistral-7B-v0.1) that shape the model."""

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    hidden_act: str = "silu"

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


@dataclass
class LatentAttentionSettings(_FromConfig):
    """NV-Embed's ``latent_attention_config`` (defaults are NV-Embed-v1's)."""

    num_latents_value: int = 512
    num_cross_heads: int = 8
    cross_dim_head: int = 4096
    latent_dim: int = 4096
    hidden_dim: int = 4096
    output_normalize: bool = True
    ff_mult: int = 4


# --------------------------------------------------------------------------------------
# bidirectional Mistral


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.float()  # (B, T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


class MistralAttention(nn.Module):
    def __init__(self, s: MistralSettings):
        super().__init__()
        self.num_heads = s.num_attention_heads
        self.num_kv_heads = s.num_key_value_heads
        self.head_dim = s.dim_per_head
        self.q_proj = nn.Linear(s.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        groups = self.num_heads // self.num_kv_heads
        if groups > 1:
            k = k.repeat_interleave(groups, dim=1)
            v = v.repeat_interleave(groups, dim=1)
        # no causal mask: every token sees every (non-padding) token, as in NV-Embed
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class MistralMLP(nn.Module):
    def __init__(self, s: MistralSettings):
        super().__init__()
        self.gate_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.up_proj = nn.Linear(s.hidden_size, s.intermediate_size, bias=False)
        self.down_proj = nn.Linear(s.intermediate_size, s.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MistralDecoderLayer(nn.Module):
    def __init__(self, s: MistralSettings):
        super().__init__()
        self.self_attn = MistralAttention(s)
        self.mlp = MistralMLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class BidirectionalMistral(nn.Module):
    """Mistral's decoder stack with a padding-only (non-causal) attention mask."""

    def __init__(self, s: MistralSettings):
        super().__init__()
        self.settings = s
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(MistralDecoderLayer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(s.dim_per_head, s.rope_theta)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if position_ids is None:  # positions count real tokens only (right padding)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.rotary_emb(position_ids, inputs_embeds.dtype)
        # additive key mask (B, 1, 1, T): padding keys get the dtype's minimum, as
        # transformers' _prepare_4d_attention_mask does for NV-Embed
        keep = attention_mask.bool()[:, None, None, :]
        mask = torch.zeros(keep.shape, dtype=inputs_embeds.dtype, device=inputs_embeds.device)
        mask = mask.masked_fill(~keep, torch.finfo(inputs_embeds.dtype).min)
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)


# --------------------------------------------------------------------------------------
# NV-Embed's latent-attention pooling


class PreNorm(nn.Module):
    def __init__(self, dim: int, fn: nn.Module, context_dim: int | None = None):
        super().__init__()
        self.fn = fn
        self.norm = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(context_dim) if context_dim is not None else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.norm(x)
        if self.norm_context is not None:
            return self.fn(x, self.norm_context(context))
        return self.fn(x)


class CrossAttention(nn.Module):
    """Queries from the token states, keys and values from the latent array; no mask."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, query_dim, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.heads
        q = self.to_q(x)
        k, v = self.to_kv(context).chunk(2, dim=-1)
        q = q.view(b, t, h, -1).transpose(1, 2)
        k = k.view(b, k.shape[1], h, -1).transpose(1, 2)
        v = v.view(b, v.shape[1], h, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, t, -1))


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gates = x.chunk(2, dim=-1)
        return x * F.gelu(gates)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult * 2), GEGLU(), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LatentAttentionPooling(nn.Module):
    """NV-Embed's ``LatentAttentionModel``: cross-attend to latents, feed-forward, masked mean."""

    def __init__(self, s: LatentAttentionSettings):
        super().__init__()
        self.settings = s
        self.cross_attend_blocks = nn.ModuleList([
            PreNorm(s.latent_dim, CrossAttention(s.latent_dim, s.hidden_dim, s.num_cross_heads, s.cross_dim_head),
                    context_dim=s.hidden_dim),
            PreNorm(s.latent_dim, FeedForward(s.latent_dim, s.ff_mult)),
        ])
        self.latents = nn.Parameter(torch.randn(s.num_latents_value, s.latent_dim))

    def token_states(self, hiddens: torch.Tensor) -> torch.Tensor:
        cross_attn, cross_ff = self.cross_attend_blocks
        latents = self.latents.unsqueeze(0).expand(hiddens.shape[0], -1, -1)
        hiddens = cross_attn(hiddens, context=latents) + hiddens
        return cross_ff(hiddens) + hiddens

    def forward(self, hiddens: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        states = self.token_states(hiddens)
        weights = pool_mask.to(states.dtype).unsqueeze(-1)
        pooled = (states * weights).sum(dim=1) / pool_mask.sum(dim=1, keepdim=True).to(states.dtype)
        if self.settings.output_normalize:
            pooled = F.normalize(pooled, p=2, dim=-1)
        return pooled
