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
        st_config = folder / "sentence_bert_config.json"
        if st_config.is_file() and json.loads(st_config.read_text()).get("do_lower_case"):
            return False  # sentence-transformers lower-cases the text itself first
        return (folder / "tokenizer.json").is_file() and (folder / "model.safetensors").is_file()
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _linear(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return nn.functional.linear(x, weights[f"{name}.weight"], weights[f"{name}.bias"])


def _layer_norm(x: torch.Tensor, weights: dict[str, torch.Tensor], name: str, eps: float) -> torch.Tensor:
    return nn.functional.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps)


class BertSentenceEncoder(nn.Module):
    """Token ids -> pooled (and optionally normalised) sentence vectors, as sentence-transformers.

    The weights are the checkpoint's tensors as loaded (``BertModel`` names, no ``bert.`` prefix),
    used functionally: nothing is randomly initialised or copied, which is most of a small
    model's load time.
    """

    def __init__(self, config: dict, weights: dict[str, torch.Tensor], *, pooling: str, normalize: bool,
                 max_seq_length: int):
        super().__init__()
        weights = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in weights.items()}
        self.layers = int(config["num_hidden_layers"])
        needed = [f"embeddings.{name}.weight" for name in
                  ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")]
        needed += ["embeddings.LayerNorm.bias"] + [
            f"encoder.layer.{i}.{part}.{kind}" for i in range(self.layers) for kind in ("weight", "bias")
            for part in ("attention.self.query", "attention.self.key", "attention.self.value",
                         "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                         "output.dense", "output.LayerNorm")]
        missing = [name for name in needed if name not in weights]
        if missing:
            raise ValueError(f"not a BertModel checkpoint: missing {missing[:3]}")
        #: loaded on the device they run on (``from_folder``); float32, as the light path is used
        self.weights = {name: weights[name] for name in needed}
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dim = int(config["hidden_size"])
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
        encoder = cls(config, load_file(str(folder / "model.safetensors"), device=str(device)),
                      pooling=pooling.split("_")[2], normalize=len(modules) == 3, max_seq_length=max_seq_length)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_seq_length)
        return encoder.eval(), tokenizer

    def _attention(self, x: torch.Tensor, bias: torch.Tensor, prefix: str, shape: tuple[int, int],
                   rows: torch.Tensor | None) -> torch.Tensor:
        """Self-attention of ``x``, the real tokens only ``(T, h)`` when ``rows`` (their places in
        the padded ``(b * n)`` layout) is given, else the padded ``(b, n, h)``."""
        (b, n), h = shape, x.shape[-1]
        w = self.weights

        def padded(t: torch.Tensor) -> torch.Tensor:
            if rows is not None:
                t = t.new_zeros(b * n, h).index_copy_(0, rows, t)
            return t.view(b, n, self.heads, h // self.heads).transpose(1, 2)

        def heads(name: str) -> torch.Tensor:
            return padded(_linear(x, w, prefix + name))
        context = nn.functional.scaled_dot_product_attention(
            heads("attention.self.query"), heads("attention.self.key"), heads("attention.self.value"),
            attn_mask=bias).transpose(1, 2).reshape(b * n, h)
        context = context.view(b, n, h) if rows is None else context.index_select(0, rows)
        out = _linear(context, w, prefix + "attention.output.dense")
        return _layer_norm(out + x, w, prefix + "attention.output.LayerNorm", self.eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled vectors of a padded batch. Every layer but attention runs on the real tokens
        only: a batch pads to its longest text (the server's micro-batches of 6- to 30-word
        sentences were ~40% padding). Attention pads them back, masked keys left at zero."""
        w = self.weights
        b, n = input_ids.shape
        positions = torch.arange(n, device=input_ids.device)
        x = nn.functional.embedding(input_ids, w["embeddings.word_embeddings.weight"]) \
            + w["embeddings.position_embeddings.weight"][positions][None] \
            + w["embeddings.token_type_embeddings.weight"][0]
        x = _layer_norm(x, w, "embeddings.LayerNorm", self.eps)
        mask = attention_mask.bool()
        bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device)
        bias = bias.masked_fill(~mask, torch.finfo(x.dtype).min)[:, None, None, :]
        rows = None if bool(mask.all()) else mask.flatten().nonzero().squeeze(1)
        if rows is not None:
            x = x.reshape(b * n, -1).index_select(0, rows)
        for i in range(self.layers):
            prefix = f"encoder.layer.{i}."
            x = self._attention(x, bias, prefix, (b, n), rows)
            hidden = nn.functional.gelu(_linear(x, w, prefix + "intermediate.dense"))
            x = _layer_norm(_linear(hidden, w, prefix + "output.dense") + x, w, prefix + "output.LayerNorm", self.eps)
        if rows is not None:
            x = x.new_zeros(b * n, x.shape[-1]).index_copy_(0, rows, x).view(b, n, -1)
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
