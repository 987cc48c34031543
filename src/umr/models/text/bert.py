"""A BERT sentence encoder in plain torch, for the common sentence-transformers layout.

``umr search`` with a text model embeds one query; importing sentence-transformers (which
imports transformers' model zoo, scikit-learn and scipy) costs seconds more than the whole
search. A folder whose modules are exactly Transformer (a ``bert`` config) -> Pooling
(mean / CLS / max) -> optional Normalize, with a ``tokenizer.json``, is run here with
``tokenizers`` + ``safetensors`` + torch instead, giving sentence-transformers' vectors
(the tests compare them to 1e-6). Anything else is loaded with sentence-transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

#: Pooling config keys this encoder implements; any other mode set means "not supported"
_POOLING_MODES = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens")
_OTHER_POOLING_MODES = ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                        "pooling_mode_lasttoken")


def supports(folder: Path) -> bool:
    """Whether :class:`BertSentenceEncoder` reproduces this sentence-transformers folder."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        types = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if types not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return False
        if modules[0].get("path", "") not in ("", ".") or config.get("model_type") != "bert":
            return False
        if config.get("position_embedding_type", "absolute") != "absolute" or config.get("hidden_act") != "gelu":
            return False
        pooling = json.loads((folder / modules[1]["path"] / "config.json").read_text())
        if any(pooling.get(key) for key in _OTHER_POOLING_MODES) or not pooling.get("include_prompt", True):
            return False
        if sum(bool(pooling.get(key)) for key in _POOLING_MODES) != 1:
            return False
        return (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


class _Layer(nn.Module):
    def __init__(self, hidden: int, heads: int, intermediate: int, eps: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attention_out = nn.Linear(hidden, hidden)
        self.attention_norm = nn.LayerNorm(hidden, eps=eps)
        self.intermediate = nn.Linear(hidden, intermediate)
        self.out = nn.Linear(intermediate, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)
        context = nn.functional.scaled_dot_product_attention(
            split(self.query(x)), split(self.key(x)), split(self.value(x)), attn_mask=bias)
        x = self.attention_norm(self.attention_out(context.transpose(1, 2).reshape(b, n, h)) + x)
        return self.out_norm(self.out(nn.functional.gelu(self.intermediate(x))) + x)


class BertSentenceEncoder(nn.Module):
    """Token ids -> pooled (and optionally normalised) sentence vectors, as sentence-transformers."""

    def __init__(self, config: dict, *, pooling: str, normalize: bool, max_seq_length: int):
        super().__init__()
        hidden, eps = int(config["hidden_size"]), float(config.get("layer_norm_eps", 1e-12))
        self.word_embeddings = nn.Embedding(int(config["vocab_size"]), hidden)
        self.position_embeddings = nn.Embedding(int(config["max_position_embeddings"]), hidden)
        self.token_type_embeddings = nn.Embedding(int(config.get("type_vocab_size", 2)), hidden)
        self.embeddings_norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(hidden, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps)
            for _ in range(int(config["num_hidden_layers"])))
        self.dim = hidden
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.pad_id = int(config.get("pad_token_id") or 0)

    @classmethod
    def from_folder(cls, folder: Path, *, device: str = "cpu") -> "tuple[BertSentenceEncoder, object]":
        """The encoder with its weights, and the folder's ``tokenizers.Tokenizer`` set up as ST uses it."""
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        modules = json.loads((folder / "modules.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        pooling_config = json.loads((folder / modules[1]["path"] / "config.json").read_text())
        pooling = next(key for key in _POOLING_MODES if pooling_config.get(key))
        st_config_file = folder / "sentence_bert_config.json"
        st_config = json.loads(st_config_file.read_text()) if st_config_file.is_file() else {}
        limit = int(config["max_position_embeddings"])
        tokenizer_config_file = folder / "tokenizer_config.json"
        if tokenizer_config_file.is_file():  # ST caps max_seq_length at the tokenizer's model_max_length
            limit = min(limit, int(json.loads(tokenizer_config_file.read_text()).get("model_max_length", limit)))
        max_seq_length = min(int(st_config.get("max_seq_length") or limit), limit)
        encoder = cls(config, pooling=pooling.split("_")[2], normalize=len(modules) == 3,
                      max_seq_length=max_seq_length)
        encoder.load_bert_state(load_file(str(folder / "model.safetensors")))
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_seq_length)
        return encoder.to(device).eval(), tokenizer

    def load_bert_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load a ``BertModel`` state dict (with or without the ``bert.`` prefix); the pooler is unused."""
        state = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
        renamed = {}
        for key, value in state.items():
            if key.startswith(("pooler.", "cls.")) or key.endswith("position_ids"):
                continue
            key = key.replace("embeddings.LayerNorm", "embeddings_norm")
            if key.startswith("embeddings."):
                key = key[len("embeddings."):]
            if key.startswith("encoder.layer."):
                key = ("layers." + key[len("encoder.layer."):]).replace("attention.self.", "") \
                    .replace("attention.output.dense", "attention_out") \
                    .replace("attention.output.LayerNorm", "attention_norm") \
                    .replace("intermediate.dense", "intermediate").replace("output.dense", "out") \
                    .replace("output.LayerNorm", "out_norm")
            renamed[key] = value
        self.load_state_dict(renamed, strict=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)[None] \
            + self.token_type_embeddings.weight[0]
        x = self.embeddings_norm(x)
        mask = attention_mask.bool()
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias)
        if self.pooling == "cls":
            pooled = x[:, 0]
        elif self.pooling == "max":
            pooled = x.masked_fill(~mask[..., None], -math.inf).max(dim=1).values
        else:
            weights = mask[..., None].to(x.dtype)
            pooled = (x * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled
