"""GME (General Multimodal Embedder) on Qwen2-VL / Qwen2.5-VL.

The vector of an item is the final hidden state of the last token of its message
(``... <|im_start|>assistant\\n<|endoftext|>``), L2-normalised. The text decoder runs with
plain sequential positions ``0..L-1`` on all three M-RoPE sections, causal attention and right
padding, as GME's reference code does (it calls the decoder with ``position_ids=None`` in the
transformers versions it was written for). That makes every row of a batch independent of the
others, so text-only, image-only and fused items share batches freely and each vector equals
the item embedded alone.

Only the vision tower and the text decoder are loaded (no ``lm_head``). Speed on CPU
(:mod:`umr.models.qwen_vl_fast`) comes from running the vision tower once per batch on real images
only (patch embedding as one matmul, attention image by image without copies), and packing the
sequences of a batch back to back in the decoder (attention per sequence, no padding at all),
computing only the pooled token in its last layer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...core.devices import cpu_default_dtype, resolve_dtype
from ...core.items import Item
from ..base import Embedder, Trainable, tokenizer_spans
from ..checkpoints import load_checkpoint
from ..prefetch import Prefetching
from ..qwen_vl_fast import decode_packed, speed_up_vision, supports_packed
from ..registry import ModelNotAvailable
from .processing_gme import GmeProcessor, ProcessedItem, build_prompt


class GmeEmbedder(Embedder, Prefetching, Trainable):
    """GME embeddings for text, images and both, in one vector space."""

    batch_size = 32
    #: padded tokens (items x longest sequence) per forward pass
    cost_budget = 8192
    #: bfloat16 vectors within cosine 0.999 of float32 on the benchmark items? (worst 0.9976: no, opt-in)
    bf16_close = False
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
        #: the packed decoder recomputes each layer in backward (``enable_gradient_checkpointing``)
        self.checkpoint_decoder = False
        speed_up_vision(model.visual)

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

        ``dtype``: float32 unless given, but on a CPU with native bf16 matmuls (AMX/AVX512-BF16)
        bfloat16 where it keeps vectors close to float32 (:attr:`bf16_close`, see
        :func:`umr.core.devices.cpu_default_dtype`).
        ``min_image_tokens``/``max_image_tokens`` bound the tokens per image (GME's defaults: 256
        and 1280).
        """
        from transformers import AutoModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(f"{folder}: no config.json, not a GME checkpoint folder")
        torch_dtype = resolve_dtype(dtype, default=cpu_default_dtype(bf16_close=cls.bf16_close)
                                    if str(device) == "cpu" else torch.float32)
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

    def embed(self, items, **options):
        """:meth:`Embedder.embed`, then one warning for the images whose aspect ratio was clamped."""
        try:
            return super().embed(items, **options)
        finally:
            self.processor.warn_clamped()

    def _cost(self, item: Item) -> int:
        return self.processor.cost(item)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        return self.pooled_states(self._each_item(items, self.prepare))

    def prepare(self, item: Item) -> ProcessedItem:
        return self.processor.prepare(item)

    def embed_prepared(self, prepared: list[ProcessedItem]) -> torch.Tensor:
        return self.pooled_states(prepared)  # embed() runs it in inference mode, training with gradients

    # -- training (umr.train) ----------------------------------------------------------------------

    def trainable_module(self) -> torch.nn.Module:
        return self.model

    def enable_gradient_checkpointing(self) -> int:
        """The vision blocks and transformers' decoder layers (the padded path) by their forward,
        and the packed decoder, which calls the layers' parts itself, layer by layer."""
        self.checkpoint_decoder = True
        return super().enable_gradient_checkpointing()

    def save_pretrained(self, folder: str | Path) -> None:
        self.model.save_pretrained(str(folder))

    def text_window(self) -> int:
        """``max_length`` less the candidate prompt's own tokens (system turn, roles, ``<|endoftext|>``)."""
        return self.processor.max_length - self.processor.cost(Item.candidate(text=""))

    def text_window_beside_image(self, width: int, height: int) -> int:
        """:meth:`text_window` less what the image adds to the sequence (its merged patches and the
        vision markers): GME cuts the whole sequence, image tokens included, at ``max_length``."""
        p, empty = self.processor, Item.candidate(text="")
        markers = len(p.prompt_ids(build_prompt(empty, with_image=True))) - len(p.prompt_ids(build_prompt(empty)))
        return self.text_window() - markers - (p.num_image_tokens(width, height) - 1)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return tokenizer_spans(self.processor.tokenizer, text)

    # -- the model -------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, processed: list[ProcessedItem]) -> torch.Tensor:
        """Last-token hidden states ``(len(processed), dim)`` (not normalised)."""
        return self.pooled_states(processed)

    def pooled_states(self, processed: list[ProcessedItem]) -> torch.Tensor:
        """:meth:`forward` with gradients (fine-tuning runs it through ``embed_prepared``)."""
        batch = self.processor.collate(processed)  # all sequences back to back: no padding anywhere
        lengths = batch["lengths"]
        input_ids = batch["input_ids"].to(self.device)
        embeds = self.model.get_input_embeddings()(input_ids)  # (T, H)
        if "pixel_values" in batch:
            grid = batch["image_grid_thw"].to(self.device)
            features = self.model.get_image_features(batch["pixel_values"].to(self.device), image_grid_thw=grid)
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
        """The packed decoder (:func:`~umr.models.qwen_vl_fast.decode_packed`), positions ``0..n-1``
        on all three M-RoPE sections of every sequence."""
        positions = torch.cat([torch.arange(n, device=embeds.device) for n in lengths])
        return decode_packed(self.model.language_model, embeds, lengths, positions.view(1, 1, -1).expand(3, 1, -1),
                             checkpoint=self.checkpoint_decoder)


def _supports_fast_decoder(model) -> bool:
    return supports_packed(model.language_model, qk_norm=False)
