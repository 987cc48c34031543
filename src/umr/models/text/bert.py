"""A BERT sentence encoder in plain torch, for the common sentence-transformers layout.

``umr search`` with a text model embeds one query; importing sentence-transformers (which
imports transformers' model zoo, scikit-learn and scipy) costs seconds more than the whole
search. A folder whose modules are exactly Transformer (a ``bert`` config) -> Pooling
(mean / CLS / max) -> optional Normalize, with a ``tokenizer.json``, is run here with
``tokenizers`` + ``safetensors`` + torch instead, giving sentence-transformers' vectors
(the tests compare them to 1e-6). Anything else is loaded with sentence-transformers.

The forward is packed: a batch's tokens are one ``[tokens, hidden]`` matrix, so the linear
layers (most of the time) never compute padding, and query, key and value are one GEMM.
Only attention sees a padded ``[batch, heads, length, head_dim]`` view. In bfloat16 only
the GEMMs run in bf16 (the weights are stored so); layer norms, softmax, residuals and
pooling stay float32, which keeps vectors within cosine 0.999 of float32.
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


_QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


class BertSentenceEncoder(nn.Module):
    """Token ids -> pooled (and optionally normalised) sentence vectors, as sentence-transformers.

    The weights are the checkpoint's tensors as loaded (``BertModel`` names, no ``bert.`` prefix),
    used functionally: nothing is randomly initialised or copied, which is most of a small
    model's load time. ``dtype`` is the GEMM weights' dtype (float32 or bfloat16).
    """

    def __init__(self, config: dict, weights: dict[str, torch.Tensor], *, pooling: str, normalize: bool,
                 max_seq_length: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        weights = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in weights.items()}
        self.layers = int(config["num_hidden_layers"])
        needed = [f"embeddings.{name}.weight" for name in
                  ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")]
        needed += ["embeddings.LayerNorm.bias"] + [
            f"encoder.layer.{i}.{part}.{kind}" for i in range(self.layers) for kind in ("weight", "bias")
            for part in _QKV + ("attention.output.dense", "attention.output.LayerNorm", "intermediate.dense",
                                "output.dense", "output.LayerNorm")]
        missing = [name for name in needed if name not in weights]
        if missing:
            raise ValueError(f"not a BertModel checkpoint: missing {missing[:3]}")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the light BERT path runs float32 or bfloat16, not {dtype}")
        self.dtype = dtype
        self.embeddings = {name.removeprefix("embeddings."): weights[name].float()
                           for name in needed if name.startswith("embeddings.")}
        #: per layer: GEMM weights in ``dtype`` (query, key and value fused), layer norms float32
        self.blocks = [self._block(weights, f"encoder.layer.{i}.") for i in range(self.layers)]
        self.heads = int(config["num_attention_heads"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.dim = int(config["hidden_size"])
        self.pooling = pooling
        self.normalize = normalize
        self.max_seq_length = max_seq_length
        self.pad_id = int(config.get("pad_token_id") or 0)

    def _block(self, weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
        def gemm(*names: str) -> tuple[torch.Tensor, torch.Tensor]:
            weight = torch.cat([weights[f"{prefix}{n}.weight"] for n in names]).to(self.dtype)
            return weight, torch.cat([weights[f"{prefix}{n}.bias"] for n in names]).to(self.dtype)

        def norm(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            return weights[f"{prefix}{name}.weight"].float(), weights[f"{prefix}{name}.bias"].float()
        return {"qkv": gemm(*_QKV), "out": gemm("attention.output.dense"),
                "norm1": norm("attention.output.LayerNorm"), "up": gemm("intermediate.dense"),
                "down": gemm("output.dense"), "norm2": norm("output.LayerNorm")}

    @classmethod
    def from_folder(cls, folder: Path, *, device: str = "cpu",
                    dtype: torch.dtype = torch.float32) -> "tuple[BertSentenceEncoder, object]":
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
                      pooling=pooling.split("_")[2], normalize=len(modules) == 3, max_seq_length=max_seq_length,
                      dtype=dtype)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_seq_length)
        return encoder.eval(), tokenizer

    def _gemm(self, x: torch.Tensor, weight_bias: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x @ W.T + b`` in the weights' dtype, returned in float32."""
        weight, bias = weight_bias
        return nn.functional.linear(x.to(weight.dtype), weight, bias).float()

    def _norm(self, x: torch.Tensor, weight_bias: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return nn.functional.layer_norm(x, x.shape[-1:], *weight_bias, self.eps)

    def forward(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Vectors of the sequences packed in ``input_ids`` (``[tokens]``; sequence ``i`` is the
        next ``lengths[i]`` ids), one row per sequence, float32."""
        device = input_ids.device
        batch, width = len(lengths), int(lengths.max())
        row = torch.repeat_interleave(torch.arange(batch, device=device), lengths)  # each token's sequence
        starts = torch.cumsum(lengths, 0) - lengths
        position = torch.arange(len(input_ids), device=device) - starts[row]
        padded_at = row * width + position  # each token's place in the padded [batch * width] layout
        e = self.embeddings
        x = nn.functional.embedding(input_ids, e["word_embeddings.weight"]) \
            + e["position_embeddings.weight"][position] + e["token_type_embeddings.weight"][0]
        x = nn.functional.layer_norm(x, x.shape[-1:], e["LayerNorm.weight"], e["LayerNorm.bias"], self.eps)
        bias = None
        if int(lengths.min()) < width:  # padding keys are masked out; padding queries are never read
            keep = torch.zeros(batch * width, dtype=torch.bool, device=device)
            keep[padded_at] = True
            bias = torch.zeros(batch, 1, 1, width, device=device).masked_fill(
                ~keep.view(batch, 1, 1, width), torch.finfo(torch.float32).min)
        heads, head_dim = self.heads, self.dim // self.heads
        for block in self.blocks:
            qkv = self._gemm(x, block["qkv"])
            if bias is None:
                padded = qkv.view(batch, width, 3, heads, head_dim)
            else:
                padded = qkv.new_zeros(batch * width, 3 * self.dim)
                padded[padded_at] = qkv
                padded = padded.view(batch, width, 3, heads, head_dim)
            q, k, v = padded.permute(2, 0, 3, 1, 4).unbind(0)
            context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            context = context.transpose(1, 2).reshape(batch * width, self.dim)
            if bias is not None:
                context = context[padded_at]
            x = self._norm(self._gemm(context, block["out"]) + x, block["norm1"])
            hidden = nn.functional.gelu(self._gemm(x, block["up"]))
            x = self._norm(self._gemm(hidden, block["down"]) + x, block["norm2"])
        if self.pooling == "cls":
            pooled = x[starts]
        elif self.pooling == "max":
            pooled = x.new_full((batch, self.dim), -math.inf).scatter_reduce_(
                0, row[:, None].expand_as(x), x, "amax")
        else:
            pooled = x.new_zeros(batch, self.dim).index_add_(0, row, x) / lengths[:, None].to(x.dtype)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled
