"""Qwen3-VL-Embedding (``qwen3-vl-embedding-2b`` / ``-8b``): GME's successor, with Matryoshka dimensions.

The vector of an item is, as in the reference ``Qwen3VLEmbedder``, the final hidden state of the
last attended token of its conversation (system turn = the item's instruction or ``Represent the
user's input.``; user turn = image, then text; the chat template's generation prompt), L2-normalised.
Unlike GME, the reference passes ``input_ids`` to ``Qwen3VLModel``, so image tokens get Qwen3-VL's
3-D M-RoPE positions (from the model's own ``get_rope_index``) and the DeepStack features of the
vision tower are added to the image tokens' hidden states after the first decoder layers. Each
sequence is independent of the others (causal attention, right padding), so any mix of text, image
and fused items shares a batch and each vector equals the item embedded alone.

Speed on CPU: the vision tower runs once per batch on the real images (its patch embedding as
one matmul), and the decoder runs on the sequences packed back to back (attention per sequence, no padding), computing only the pooled token
in its last layer. At load time a probe batch is embedded both ways; if the packed path differs from
transformers' own forward on padded rows (e.g. a future decoder change), that forward is used.

Items with neither text nor image are refused as item errors (the reference would embed the text
``NULL``); so are images the reference could not load (it would then embed the whole batch as
``NULL``) and items whose image tokens do not fit in ``max_length``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...types import Item
from ..base import Embedder, resolve_dtype
from ..checkpoints import load_checkpoint
from ..registry import ModelNotAvailable
from .processing_qwen3vl import (DEFAULT_MAX_IMAGE_TOKENS, DEFAULT_MAX_LENGTH, DEFAULT_MIN_IMAGE_TOKENS,
                                 ProcessedInput, Qwen3VLProcessor, normalise_instruction, user_content)

DEFAULT_INSTRUCTION = "Represent the user's input."


def embedding_messages(item: Item, default_instruction: str = DEFAULT_INSTRUCTION) -> list[dict]:
    """The reference's conversation for an item: the instruction (queries only; candidates never
    carry one in umr) or the default as the system turn, then the item."""
    instruction = normalise_instruction(item.instruction) if item.is_query else None
    return [{"role": "system", "content": [{"type": "text", "text": instruction or default_instruction}]},
            {"role": "user", "content": user_content(item)}]


class Qwen3VLEmbedder(Embedder):
    """Qwen3-VL-Embedding vectors for text, images and both, in one space."""

    batch_size = 32
    #: padded tokens (items x longest sequence) per forward pass
    cost_budget = 8192
    #: Qwen3-VL-Embedding is trained with Matryoshka representation learning
    matryoshka = True

    def __init__(self, model, processor: Qwen3VLProcessor, *, name: str = "qwen3vl", device: str = "cpu",
                 packed: bool = True):
        self.model = model
        self.processor = processor
        self.name = name
        self.device = torch.device(device)
        self.dim = int(model.config.text_config.hidden_size)
        self.image_token_id = int(model.config.image_token_id)
        pad = processor.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else 0)
        #: decode packed sequences with umr's loop (True) or run transformers' forward on padded rows
        self.packed = packed and _supports_packed(model) and self._packed_matches_transformers()
        if self.packed:
            _patch_embed_as_linear(model.visual)

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int = DEFAULT_MAX_LENGTH, attn_implementation: str = "sdpa",
                        packed: bool = True) -> "Qwen3VLEmbedder":
        """Load a Qwen3-VL(-Embedding) checkpoint folder.

        ``dtype``: float32 on CPU, bfloat16 on a GPU, unless given. ``min_image_tokens`` /
        ``max_image_tokens`` bound the merged 32x32-pixel tokens per image (the reference's 4 and
        1800); ``max_length`` cuts sequences as the reference does (8192).
        """
        from transformers import AutoModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(f"{folder}: no config.json, not a Qwen3-VL checkpoint folder")
        torch_dtype = resolve_dtype(dtype, default=torch.bfloat16 if str(device).startswith("cuda")
                                    else torch.float32)
        if min_image_tokens is None:  # a bound left unset follows the one given
            min_image_tokens = DEFAULT_MIN_IMAGE_TOKENS if max_image_tokens is None \
                else min(DEFAULT_MIN_IMAGE_TOKENS, int(max_image_tokens))
        if max_image_tokens is None:
            max_image_tokens = max(DEFAULT_MAX_IMAGE_TOKENS, int(min_image_tokens))
        processor = Qwen3VLProcessor.from_pretrained(folder, min_image_tokens=min_image_tokens,
                                                     max_image_tokens=max_image_tokens, max_length=max_length)
        config, model = load_checkpoint(AutoModel, folder, what="a complete Qwen3-VL checkpoint",
                                        dtype=torch_dtype, attn_implementation=attn_implementation)
        if not all(hasattr(model, a) for a in ("language_model", "visual", "get_image_features", "get_rope_index")):
            raise ModelNotAvailable(f"{folder}: {type(model).__name__} is not a Qwen3-VL model")
        model.to(device).eval()
        return cls(model, processor, name=folder.name, device=device, packed=packed)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.language_model.embed_tokens.weight.dtype

    def vector_options(self) -> dict:
        p = self.processor
        return {"dtype": str(self.dtype).removeprefix("torch."), "min_image_tokens": p.min_image_tokens,
                "max_image_tokens": p.max_image_tokens, "max_length": p.max_length}

    # -- the Embedder hooks ----------------------------------------------------------------------

    def _cost(self, item: Item) -> int:
        images = [item.image] if item.image is not None else []
        tokens = self.processor.count_tokens(embedding_messages(item), images, item_id=item.id)
        return min(tokens, self.processor.max_length)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        return self.forward(self._each_item(items, self.process))

    def process(self, item: Item) -> ProcessedInput:
        """Token ids (cut at ``max_length``) and patches of one item."""
        images = [item.image] if item.image is not None else []
        encoded = self.processor.encode(embedding_messages(item), images, item_id=item.id)
        return self.processor.truncate(encoded, item_id=item.id)

    # -- the model -------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, processed: list[ProcessedInput], *, packed: bool | None = None) -> torch.Tensor:
        """Last-token hidden states ``(len(processed), dim)``, not normalised."""
        if not (self.packed if packed is None else packed):
            return self._forward_transformers(processed).float()
        lengths = [len(p.input_ids) for p in processed]
        ids = torch.tensor([t for p in processed for t in p.input_ids], dtype=torch.long, device=self.device)
        embeds = self.model.get_input_embeddings()(ids)  # (T, H)
        visual = ids == self.image_token_id
        deepstack: list[torch.Tensor] = []
        grids = [g for p in processed for g in p.grids]
        if grids:  # the vision tower once, on every image of the batch
            pixels = torch.from_numpy(np.concatenate([p.pixel_values for p in processed if p.grids]))
            out = self.model.get_image_features(pixels.to(self.device), image_grid_thw=self._grid_tensor(grids))
            embeds[visual] = torch.cat(list(out.pooler_output)).to(embeds.dtype)
            deepstack = [torch.cat(list(f)).to(embeds.dtype) for f in out.deepstack_features]
        positions = torch.cat([self._rope_positions(p) for p in processed], dim=-1)  # (3, 1, T)
        return self._decode_packed(embeds, lengths, positions, visual, deepstack).float()

    def _grid_tensor(self, grids) -> torch.Tensor:
        return torch.tensor(grids, dtype=torch.long, device=self.device)

    def _rope_positions(self, p: ProcessedInput) -> torch.Tensor:
        """3-D M-RoPE positions ``(3, 1, n)`` of one sequence, from the model's own rope index."""
        ids = torch.tensor([p.input_ids], dtype=torch.long, device=self.device)
        if not p.grids:
            return torch.arange(ids.shape[1], device=self.device).view(1, 1, -1).expand(3, 1, -1)
        positions, _ = self.model.get_rope_index(ids, (ids == self.image_token_id).int(),
                                                 image_grid_thw=self._grid_tensor(p.grids))
        return positions

    def _forward_transformers(self, processed: list[ProcessedInput]) -> torch.Tensor:
        """transformers' ``Qwen3VLModel`` forward on right-padded rows, as the reference calls it."""
        lengths = [len(p.input_ids) for p in processed]
        width = max(lengths)
        ids = torch.full((len(processed), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(processed), width), dtype=torch.long)
        for row, p in enumerate(processed):
            ids[row, : len(p.input_ids)] = torch.tensor(p.input_ids)
            mask[row, : len(p.input_ids)] = 1
        inputs = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        grids = [g for p in processed for g in p.grids]
        if grids:
            pixels = np.concatenate([p.pixel_values for p in processed if p.grids])
            inputs.update(pixel_values=torch.from_numpy(pixels).to(self.device), image_grid_thw=self._grid_tensor(grids),
                          mm_token_type_ids=(inputs["input_ids"] == self.image_token_id).int())
        hidden = self.model(**inputs, use_cache=False).last_hidden_state
        last = torch.tensor(lengths, device=self.device) - 1
        return hidden[torch.arange(len(processed), device=self.device), last]

    def _decode_packed(self, embeds: torch.Tensor, lengths: list[int], positions: torch.Tensor,
                       visual: torch.Tensor, deepstack: list[torch.Tensor]) -> torch.Tensor:
        """The text decoder on sequences packed back to back; each sequence's last-token state.

        The decoder's own modules (norms, q/k norms, projections, MLPs, rotary tables) with
        attention per sequence (SDPA's causal kernel), DeepStack features added to the image
        tokens after the first layers as transformers adds them, and in the last layer only the
        pooled tokens computed (their keys and values still cover the whole sequence).
        """
        lm = self.model.language_model
        device = embeds.device
        spans, start = [], 0
        for n in lengths:
            spans.append((start, start + n))
            start += n
        total = start
        last = torch.tensor([e - 1 for _, e in spans], device=device)
        cos, sin = lm.rotary_emb(embeds[None], positions)
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # (T, 1, head_dim): broadcast over heads
        visual_rank = torch.cumsum(visual.long(), 0) - 1  # row of each image token in the DeepStack features
        hidden = embeds
        n_layers = len(lm.layers)
        for index, layer in enumerate(lm.layers):
            attn = layer.self_attn
            head_dim = attn.head_dim
            final = index == n_layers - 1
            normed = layer.input_layernorm(hidden)
            query = attn.q_proj(normed[last] if final else normed)
            query = attn.q_norm(query.view(query.shape[0], -1, head_dim))
            key = attn.k_norm(attn.k_proj(normed).view(total, -1, head_dim))
            value = attn.v_proj(normed).view(total, -1, head_dim)
            q_cos, q_sin = (cos[last], sin[last]) if final else (cos, sin)
            query = query * q_cos + _rotate_half(query) * q_sin
            key = key * cos + _rotate_half(key) * sin
            grouped = query.shape[1] != key.shape[1]
            outputs = []
            for row, (s, e) in enumerate(spans):
                k = key[s:e].transpose(0, 1)
                v = value[s:e].transpose(0, 1)
                q = (query[row: row + 1] if final else query[s:e]).transpose(0, 1)
                # the pooled (last) token sees its whole sequence; otherwise causal
                out = torch.nn.functional.scaled_dot_product_attention(
                    q[None], k[None], v[None], is_causal=not final, scale=attn.scaling, enable_gqa=grouped)
                outputs.append(out[0].transpose(0, 1).reshape(q.shape[1], -1))
            attended = attn.o_proj(torch.cat(outputs))
            hidden = (hidden[last] if final else hidden) + attended
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
            if index < len(deepstack):
                rows = visual[last] if final else visual
                ranks = visual_rank[last][rows] if final else visual_rank[rows]
                hidden = hidden.clone()
                hidden[rows] = hidden[rows] + deepstack[index][ranks]
        return lm.norm(hidden)

    def _packed_matches_transformers(self) -> bool:
        """Embed a probe batch (text, image, fused) both ways; the packed path only if they agree."""
        rng = np.random.RandomState(0)
        image = Image.fromarray(rng.randint(0, 256, (70, 100, 3), dtype=np.uint8))
        probe = [Item.candidate("a probe sentence for the exactness check"),
                 Item.query("find it", image=image, instruction="Find the matching picture"),
                 Item.candidate(image=image)]
        processed = [self.processor.encode(embedding_messages(item), [item.image] if item.image else [])
                     for item in probe]  # not truncated: the check must not depend on max_length
        packed = torch.nn.functional.normalize(self.forward(processed, packed=True), dim=-1)
        plain = torch.nn.functional.normalize(self.forward(processed, packed=False), dim=-1)
        tolerance = 1e-4 if self.dtype == torch.float32 else 3e-2
        return bool((packed - plain).abs().max() <= tolerance)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _LinearPatchEmbed(torch.nn.Module):
    """Qwen3-VL's patch embedding (a Conv3d whose stride is its kernel) as one linear map over the
    flattened patch: the same weights and dot products, without oneDNN's slow 3-D convolution."""

    def __init__(self, conv: torch.nn.Conv3d):
        super().__init__()
        self.conv = conv  # keeps the checkpoint's parameter (shared, not copied)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        weight = self.conv.weight.flatten(1)  # (embed, C * T * P * P), the flattening order of a patch
        return torch.nn.functional.linear(patches.reshape(-1, weight.shape[1]).to(weight.dtype), weight,
                                          self.conv.bias)


def _patch_embed_as_linear(visual) -> None:
    """Swap the vision tower's patch embedding for :class:`_LinearPatchEmbed` where it is exactly one."""
    embed = getattr(visual, "patch_embed", None)
    conv = getattr(embed, "proj", None)
    if (isinstance(conv, torch.nn.Conv3d) and tuple(conv.kernel_size) == tuple(conv.stride)
            and conv.padding == (0, 0, 0) and conv.groups == 1):
        visual.patch_embed = _LinearPatchEmbed(conv)


def _supports_packed(model) -> bool:
    """The packed loop covers Qwen3-VL's text decoder (q/k norms, M-RoPE, no sliding window)."""
    lm = model.language_model
    config = lm.config
    if getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None):
        return False
    layer = lm.layers[-1]
    attn = getattr(layer, "self_attn", None)
    needed = ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm", "head_dim", "scaling")
    return (attn is not None and all(hasattr(attn, n) for n in needed) and hasattr(layer, "mlp")
            and hasattr(layer, "input_layernorm") and hasattr(layer, "post_attention_layernorm")
            and hasattr(lm, "rotary_emb") and hasattr(lm, "norm"))
