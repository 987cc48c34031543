"""Qwen3-VL-Embedding (``qwen3-vl-embedding-2b`` / ``-8b``): GME's successor, with Matryoshka dimensions.

The vector of an item is, as in the reference ``Qwen3VLEmbedder``, the final hidden state of the
last attended token of its conversation (system turn = the item's instruction or ``Represent the
user's input.``; user turn = video, then image, then text; the chat template's generation prompt),
L2-normalised. Unlike GME, the reference passes ``input_ids`` to ``Qwen3VLModel``, so image and
video tokens get Qwen3-VL's 3-D M-RoPE positions (from the model's own ``get_rope_index``: each
frame pair of a video placed like an image) and the DeepStack features of the vision tower are
added to their hidden states after the first decoder layers. Each sequence is independent of the
others (causal attention, right padding), so any mix of text, image, video and fused items shares
a batch and each vector equals the item embedded alone.

Videos (a file or a list of frames; per-item ``fps`` and ``max_frames``, else the model's, 1 and
64 as the reference's) are sampled, resized and timestamped as the reference's qwen-vl-utils does
(:mod:`umr.models.qwen3vl.processing_qwen3vl`), decoded by PyAV (:mod:`umr.core.video`). Where a video
would not fit in ``max_length`` (or in ``max_video_tokens``), it is planned with smaller frames,
then fewer, instead of failing as the reference does.

Speed on CPU (:mod:`umr.models.qwen_vl_fast`): the vision tower runs once per batch on the real
images (patch embedding as one matmul, attention image by image without copies), and the decoder
runs on the sequences packed back to back (attention per sequence, no padding), computing only the
pooled token in its last layer. At load time a probe batch is embedded both ways; if the fast path
differs from transformers' own forward on padded rows (e.g. a future transformers change), that
forward is used.

Items with neither text nor image are refused as item errors (the reference would embed the text
``NULL``); so are images and videos the reference could not load (it would then embed the whole
batch as ``NULL``) and items whose image tokens do not fit in ``max_length``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...core.devices import cpu_default_dtype, resolve_dtype
from ...core.items import Item
from ..base import Embedder
from ..checkpoints import load_checkpoint
from ..prefetch import Prefetching
from ..qwen_vl_fast import decode_packed, speed_up_vision, supports_packed
from ..registry import ModelNotAvailable
from .processing_qwen3vl import (DEFAULT_FPS, DEFAULT_MAX_FRAMES, DEFAULT_MAX_IMAGE_TOKENS, DEFAULT_MAX_LENGTH,
                                 DEFAULT_MIN_IMAGE_TOKENS, ProcessedInput, Qwen3VLProcessor, Video, VideoPlan,
                                 embedding_messages)

class Qwen3VLEmbedder(Embedder, Prefetching):
    """Qwen3-VL-Embedding vectors for text, images, videos and text with either, in one space."""

    batch_size = 32
    #: padded tokens (items x longest sequence) per forward pass
    cost_budget = 8192
    #: Qwen3-VL-Embedding is trained with Matryoshka representation learning
    matryoshka = True
    #: bfloat16 vectors within cosine 0.999 of float32 on the benchmark items? (worst 0.9996: yes)
    bf16_close = True
    sees_video = True

    def __init__(self, model, processor: Qwen3VLProcessor, *, name: str = "qwen3vl", device: str = "cpu",
                 packed: bool = True):
        self.model = model
        self.processor = processor
        self.name = name
        self.device = torch.device(device)
        self.dim = int(model.config.text_config.hidden_size)
        self.image_token_id = int(model.config.image_token_id)
        self.video_token_id = int(model.config.video_token_id)
        #: decode packed sequences with umr's loop (True) or run transformers' forward on padded rows
        self.packed = packed and supports_packed(model.language_model, qk_norm=True) \
            and self._fast_path_matches_transformers()

    # -- loading --------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str = "cpu", dtype: str | None = None,
                        min_image_tokens: int | None = None, max_image_tokens: int | None = None,
                        max_length: int = DEFAULT_MAX_LENGTH, fps: float = DEFAULT_FPS,
                        max_frames: int = DEFAULT_MAX_FRAMES, max_video_tokens: int | None = None,
                        attn_implementation: str = "sdpa", packed: bool = True) -> "Qwen3VLEmbedder":
        """Load a Qwen3-VL(-Embedding) checkpoint folder.

        ``dtype``: bfloat16 on a GPU unless given; on a CPU bfloat16 where it is fast (AMX/AVX512-BF16)
        and close to float32 (:attr:`bf16_close`), else float32. ``min_image_tokens`` /
        ``max_image_tokens`` bound the merged 32x32-pixel tokens per image (the reference's 4 and
        1800); ``max_length`` cuts sequences as the reference does (8192). ``fps`` and
        ``max_frames``: how video files are sampled unless an item says otherwise (the reference's 1
        and 64); ``max_video_tokens``: the most video tokens of one item (default: what fits in
        ``max_length``), a video over it planned with smaller frames, then fewer.
        """
        from transformers import AutoModel

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(f"{folder}: no config.json, not a Qwen3-VL checkpoint folder")
        torch_dtype = resolve_dtype(dtype, default=cpu_default_dtype(bf16_close=cls.bf16_close)
                                    if str(device) == "cpu" else torch.bfloat16)
        if min_image_tokens is None:  # a bound left unset follows the one given
            min_image_tokens = DEFAULT_MIN_IMAGE_TOKENS if max_image_tokens is None \
                else min(DEFAULT_MIN_IMAGE_TOKENS, int(max_image_tokens))
        if max_image_tokens is None:
            max_image_tokens = max(DEFAULT_MAX_IMAGE_TOKENS, int(min_image_tokens))
        processor = Qwen3VLProcessor.from_pretrained(folder, min_image_tokens=min_image_tokens,
                                                     max_image_tokens=max_image_tokens, max_length=max_length,
                                                     fps=fps, max_frames=max_frames, max_video_tokens=max_video_tokens)
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
        """The options that change vectors; the video ones only where they differ from the
        reference's defaults, so that an index built before umr read video keeps opening."""
        p = self.processor
        video = {"fps": (p.fps, DEFAULT_FPS), "max_frames": (p.max_frames, DEFAULT_MAX_FRAMES),
                 "max_video_tokens": (p.max_video_tokens, None)}
        return {"dtype": str(self.dtype).removeprefix("torch."), "min_image_tokens": p.min_image_tokens,
                "max_image_tokens": p.max_image_tokens, "max_length": p.max_length,
                **{name: value for name, (value, default) in video.items() if value != default}}

    # -- the Embedder hooks ----------------------------------------------------------------------

    def _cost(self, item: Item) -> int:
        return self.processor.cost(item)

    def _embed_batch(self, items: list[Item]) -> torch.Tensor:
        return self.forward(self._each_item(items, self.prepare))

    def embed_prepared(self, prepared: list[ProcessedInput]) -> torch.Tensor:
        return self.forward(prepared)

    def prepare(self, item: Item) -> ProcessedInput:
        return self.processor.prepare(item)

    def video_plan(self, item: Item) -> VideoPlan:
        """Which frames of the item's video, at what size and times (within the token budget)."""
        return self.processor.item_video_plan(item)

    def video_seconds(self, width: int, height: int) -> float:
        """Seconds of a ``width x height`` video one candidate covers at this model's sampling
        without shrinking frames or passing ``max_length`` (how ``umr index`` cuts segments)."""
        return self.processor.video_seconds(width, height, embedding_messages(Item(video="video")))

    # -- the model -------------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(self, processed: list[ProcessedInput], *, packed: bool | None = None) -> torch.Tensor:
        """Last-token hidden states ``(len(processed), dim)``, not normalised."""
        if not (self.packed if packed is None else packed):
            return self._forward_transformers(processed).float()
        lengths = [len(p.input_ids) for p in processed]
        ids = torch.tensor([t for p in processed for t in p.input_ids], dtype=torch.long, device=self.device)
        embeds = self.model.get_input_embeddings()(ids)  # (T, H)
        is_image, is_video = ids == self.image_token_id, ids == self.video_token_id
        visual = is_image | is_video
        deepstack: list[torch.Tensor] = []
        image_grids = [g for p in processed for g in p.grids]
        video_grids = [g for p in processed for g in p.video_grids]
        if image_grids or video_grids:  # the vision tower once, on every image and video of the batch
            pixels = torch.from_numpy(np.concatenate([p.pixel_values for p in processed if p.grids]
                                                     + [p.video_pixel_values for p in processed if p.video_grids]))
            out = self.model.get_image_features(pixels.to(self.device),
                                                image_grid_thw=self._grid_tensor(image_grids + video_grids))
            # per image or video: its tokens (pooler output) and DeepStack rows, images first
            split = len(image_grids)
            features = list(out.pooler_output)
            embeds[is_image] = torch.cat(features[:split] or [embeds[:0]]).to(embeds.dtype)
            embeds[is_video] = torch.cat(features[split:] or [embeds[:0]]).to(embeds.dtype)
            video_rows = is_video[visual]  # which of the visual tokens, in sequence order, are video tokens
            for level in out.deepstack_features:
                level = list(level)
                joint = embeds.new_empty(int(visual.sum()), embeds.shape[-1])
                joint[~video_rows] = torch.cat(level[:split] or [joint[:0]]).to(embeds.dtype)
                joint[video_rows] = torch.cat(level[split:] or [joint[:0]]).to(embeds.dtype)
                deepstack.append(joint)
        positions = torch.cat([self._rope_positions(p) for p in processed], dim=-1)  # (3, 1, T)
        return decode_packed(self.model.language_model, embeds, lengths, positions, visual=visual,
                             deepstack=deepstack).float()

    def _grid_tensor(self, grids) -> torch.Tensor:
        return torch.tensor(grids, dtype=torch.long, device=self.device)

    def _rope_positions(self, p: ProcessedInput) -> torch.Tensor:
        """3-D M-RoPE positions ``(3, 1, n)`` of one sequence, from the model's own rope index."""
        ids = torch.tensor([p.input_ids], dtype=torch.long, device=self.device)
        if not p.grids and not p.video_grids:
            return torch.arange(ids.shape[1], device=self.device).view(1, 1, -1).expand(3, 1, -1)
        positions, _ = self.model.get_rope_index(
            ids, self._token_types(ids), image_grid_thw=self._grid_tensor(p.grids) if p.grids else None,
            video_grid_thw=self._grid_tensor(p.video_grids) if p.video_grids else None)
        return positions

    def _token_types(self, ids: torch.Tensor) -> torch.Tensor:
        """transformers' ``mm_token_type_ids``: 0 text, 1 image, 2 video."""
        return (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int()

    def _forward_transformers(self, processed: list[ProcessedInput]) -> torch.Tensor:
        """transformers' ``Qwen3VLModel`` forward on right-padded rows, as the reference calls it."""
        lengths = [len(p.input_ids) for p in processed]
        inputs = {name: value.to(self.device) for name, value in self.processor.collate(processed).items()}
        hidden = self.model(**inputs, use_cache=False).last_hidden_state
        last = torch.tensor(lengths, device=self.device) - 1
        return hidden[torch.arange(len(processed), device=self.device), last]

    def _fast_path_matches_transformers(self) -> bool:
        """Embed a probe batch (text, image, fused, video with text) with transformers' forward, then
        with the fast vision tower and the packed decoder; keep the fast path only if the two agree."""
        rng = np.random.RandomState(0)
        image = Image.fromarray(rng.randint(0, 256, (70, 100, 3), dtype=np.uint8))
        probe = [Item.candidate("a probe sentence for the exactness check"),
                 Item.query("find it", image=image, instruction="Find the matching picture"),
                 Item.candidate(image=image)]
        processed = [self.processor.encode(embedding_messages(item), [item.image] if item.image else [])
                     for item in probe]  # not truncated: the check must not depend on max_length
        # a video of two frame pairs, its frames given (no file, no decoder): the item only names it
        f = self.processor.factor
        frames = rng.randint(0, 256, (4, 2 * f, 3 * f, 3), dtype=np.uint8)
        clip = Video(VideoPlan((0, 1, 2, 3), (0.0, 0.5, 1.0, 1.5), 2 * f, 3 * f), frames)
        messages = embedding_messages(Item.candidate("a clip", video=b"frames given above"))
        processed.append(self.processor.encode(messages, videos=[clip]))
        plain = torch.nn.functional.normalize(self.forward(processed, packed=False), dim=-1)
        restore = speed_up_vision(self.model.visual)
        fast = torch.nn.functional.normalize(self.forward(processed, packed=True), dim=-1)
        tolerance = 1e-4 if self.dtype == torch.float32 else 3e-2
        if (fast - plain).abs().max() <= tolerance:
            return True
        restore()
        return False
