"""Qwen3-VL inputs: conversations, ``fetch_image``-style resizing, patches, token ids, truncation.

One module for every Qwen3-VL model umr runs (the embedder here, the Qwen3-VL-Reranker in
``umr.rerank.qwen3vl``):
both reference implementations (QwenLM/Qwen3-VL-Embedding) build a chat conversation, render it
with the checkpoint's chat template and the generation prompt, load each image with
``qwen_vl_utils.fetch_image`` (``image_patch_size=16``) and call the Qwen3-VL processor with
``do_resize=False``. This module reproduces that, one sequence at a time:

* images as ``fetch_image`` does: RGBA pasted on white through its alpha, every other mode through
  PIL's ``convert("RGB")`` (so a palette image's transparency is dropped, not composited); aspect
  ratios over 200 refused; ``smart_resize`` with factor 32 (patch 16 x merge 2) between
  ``min_pixels`` and ``max_pixels``; PIL's default filter for RGB, which is bicubic;
* then, unresized, rescaled and normalised exactly as the Qwen2-VL image processor does, and cut
  into ``patch x patch`` cells repeated over the temporal patch;
* one ``<|image_pad|>`` per merged 32x32 token, text tokenised as the processor tokenises it;
* truncation as the processor call really truncates (``truncation=True, max_length=N``): the
  tokenizer keeps the first ``N`` tokens, dropping the end of the prompt. The processor then
  refuses a sequence whose image tokens were cut, so such an item is an error here too.

The reranker cuts differently (:func:`truncate_keeping_special`): its reference keeps the closing
tokens and, above ``max_length``, every special token, cutting only ordinary tokens.

Resizing needs only the image header, so :meth:`Qwen3VLProcessor.count_tokens` gives a sequence's
exact length cheaply (used to plan batches).

Videos follow ``qwen_vl_utils.fetch_video`` (0.0.14) as the embedder calls it, then transformers'
Qwen3-VL video processor (4.57):

* a video file: ``n = frames / rate x fps`` clamped to [4, ``max_frames`` rounded down to even]
  and to the frame count, rounded down to even; frames ``linspace(0, frames - 1, n).round()``
  (float32, as torch computes it); each resized to multiples of 32 with 128 to 768 merged tokens
  (at most ``128,000 x 0.9 / n x 2`` of them, at least 1.05 x 128), bicubic with antialiasing
  on uint8 (:func:`~umr.models.qwen_vl_patches.resize_frames`); frame times ``index / rate``;
* a list of frames: more than ``max_frames`` are thinned to ``linspace(0, len - 1, max_frames)``
  truncated; each loaded as ``fetch_image`` with factor 64 (qwen-vl-utils passes the factor where
  the patch size belongs: multiples of 64, 4 to 16,384 such tokens, PIL bicubic); an odd count
  padded by repeating the last; times at a nominal 2 frames per second; then resized as a video
  file's frames with a budget of 10 x 768 tokens per frame pair;
* two consecutive frames make one temporal patch, written ``<t seconds>`` (the mean of the
  pair's times, ``.1f``) followed by ``<|vision_start|>``, its tokens and ``<|vision_end|>``.

A video that would not fit (its tokens past ``max_length``, or more than ``max_video_tokens``) is
planned smaller instead of refused (:meth:`Qwen3VLProcessor.plan_video`): first its frames are
resized smaller, as qwen-vl-utils' own ``total_pixels`` budget shrinks them, down to the
1.05 x 128-token floor; then fewer frames are sampled (evenly, over the whole video) at the largest
size that fits. A video that fits is planned exactly as the reference plans it.
"""

from __future__ import annotations

import functools
import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from ...core.images import decode_image, image_size
from ...core.items import ImageSource, Item, ItemError, VideoInput
from ...core.video import read_frames
from ..processing import Processor, pad_ids
from ..qwen_vl_patches import (QwenVLImageSettings, VideoPatchCutter, read_patch_settings, resize_frames,
                               smart_resize)
from ..registry import ModelNotAvailable
from .video_sampling import (FRAME_FACTOR, MAX_RATIO, MIN_FRAMES, MODEL_SEQ_LEN, VIDEO_MAX_TOKENS, VIDEO_MIN_TOKENS,
                             FileSampler, FrameSampler, ListSampler, VideoPlan)

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
#: what the chat template writes for a video, replaced by one timestamped block per frame pair
VIDEO_PLACEHOLDER = VISION_START + VIDEO_PAD + VISION_END

#: the reference embedder's image bounds (``MIN_PIXELS`` / ``MAX_PIXELS``), in merged 32x32 tokens
DEFAULT_MIN_IMAGE_TOKENS = 4
DEFAULT_MAX_IMAGE_TOKENS = 1800
DEFAULT_MAX_LENGTH = 8192
#: the reference embedder's video sampling (``FPS``, ``MAX_FRAMES``)
DEFAULT_FPS = 1.0
DEFAULT_MAX_FRAMES = 64
#: the time written in the prompt's timestamps when sizing a segment of any video (5 digits of seconds)
LATE_SECONDS = 99_000.0
#: the system turn of an item without an instruction (the reference embedder's default)
DEFAULT_INSTRUCTION = "Represent the user's input."
#: conversations whose token ids are kept between the cost estimate and encoding (an embed call's worth)
PROMPTS_REMEMBERED = 8192


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as ``qwen_vl_utils`` makes it: RGBA composited on white, any other mode converted."""
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        return canvas
    return image.convert("RGB")


def normalise_instruction(instruction: str | None) -> str | None:
    """The reference's instruction clean-up: stripped, ``.`` appended unless it ends in punctuation
    (any Unicode ``P*`` category); empty or blank counts as none."""
    if not instruction:
        return None
    instruction = instruction.strip()
    if not instruction:
        return None
    if not unicodedata.category(instruction[-1]).startswith("P"):
        instruction += "."
    return instruction


def user_content(item: Item) -> list[dict[str, Any]]:
    """An item as the reference's user content: its video first, then its image, then its text."""
    content: list[dict[str, Any]] = []
    if item.video is not None:
        content.append({"type": "video"})
    if item.image is not None:
        content.append({"type": "image"})
    if item.text is not None:
        content.append({"type": "text", "text": item.text})
    return content


def embedding_messages(item: Item, default_instruction: str = DEFAULT_INSTRUCTION) -> list[dict]:
    """The reference's conversation for an item: the instruction (queries only; candidates never
    carry one in umr) or the default as the system turn, then the item."""
    instruction = normalise_instruction(item.instruction) if item.is_query else None
    return [{"role": "system", "content": [{"type": "text", "text": instruction or default_instruction}]},
            {"role": "user", "content": user_content(item)}]


@dataclass
class ProcessedInput:
    """One sequence ready for the model: token ids and, for its images and its videos (each in
    order), patches and grids."""

    input_ids: list[int]
    pixel_values: np.ndarray | None = None  # (sum of grid_h * grid_w, C * T * P * P) float32
    grids: list[tuple[int, int, int]] = field(default_factory=list)
    video_pixel_values: np.ndarray | None = None  # (sum of grid_t * grid_h * grid_w, C * T * P * P) float32
    video_grids: list[tuple[int, int, int]] = field(default_factory=list)


@dataclass
class Video:
    """A planned video's frames, resized: ``(n, height, width, 3)`` uint8."""

    plan: VideoPlan
    frames: np.ndarray


class Qwen3VLProcessor(QwenVLImageSettings, Processor[Item, ProcessedInput]):
    """Qwen3-VL conversations and images to model inputs, one sequence at a time.

    :meth:`cost`, :meth:`prepare` and :meth:`collate` make an item's embedding conversation
    (:func:`embedding_messages`); :meth:`encode` and :meth:`count_tokens` take any conversation
    (the Qwen3-VL-Reranker builds its own from a pair)."""

    def __init__(self, tokenizer, chat_template: str, *, min_image_tokens: int = DEFAULT_MIN_IMAGE_TOKENS,
                 max_image_tokens: int = DEFAULT_MAX_IMAGE_TOKENS, max_length: int = DEFAULT_MAX_LENGTH,
                 patch_size: int = 16, merge_size: int = 2, temporal_patch_size: int = 2,
                 image_mean: Sequence[float] = (0.5, 0.5, 0.5), image_std: Sequence[float] = (0.5, 0.5, 0.5),
                 rescale_factor: float = 1 / 255, fps: float = DEFAULT_FPS, max_frames: int = DEFAULT_MAX_FRAMES,
                 max_video_tokens: int | None = None, video_settings: dict[str, Any] | None = None):
        super().__init__(min_image_tokens=min_image_tokens, max_image_tokens=max_image_tokens,
                         max_length=max_length, patch_size=patch_size, merge_size=merge_size,
                         temporal_patch_size=temporal_patch_size, image_mean=image_mean, image_std=image_std,
                         rescale_factor=rescale_factor)
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps < float("inf"):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < FRAME_FACTOR:
            raise ValueError(f"max_frames must be a whole number of at least {FRAME_FACTOR}, got {max_frames!r}")
        if max_video_tokens is not None and int(max_video_tokens) < 1:
            raise ValueError(f"max_video_tokens must be at least 1, got {max_video_tokens}")
        #: frames sampled per second of a video file, and the most frames sampled (items may override both)
        self.fps = float(fps)
        self.max_frames = int(max_frames)
        #: the most video tokens of one item (None: as many as fit in max_length)
        self.max_video_tokens = None if max_video_tokens is None else int(max_video_tokens)
        video = {"image_mean": image_mean, "image_std": image_std, "rescale_factor": rescale_factor,
                 **(video_settings or {})}
        self.cut_video = VideoPatchCutter(patch_size=self.patch_size, merge_size=self.merge_size,
                                          temporal_patch_size=self.temporal_patch_size, image_mean=video["image_mean"],
                                          image_std=video["image_std"], rescale_factor=video["rescale_factor"])
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        self.vision_start_id = tokenizer.convert_tokens_to_ids(VISION_START)
        self.video_token_id = tokenizer.convert_tokens_to_ids(VIDEO_PAD)
        self.pad_token_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self._rendered_ids = functools.lru_cache(maxsize=PROMPTS_REMEMBERED)(self._ids_of_json)

    @classmethod
    def from_pretrained(cls, folder: str | Path, **options: Any) -> "Qwen3VLProcessor":
        """The tokenizer, chat template, image and video settings of a Qwen3-VL checkpoint folder
        (``video_preprocessor_config.json`` where it has one, as transformers reads it)."""
        from transformers import AutoTokenizer

        folder = Path(folder)
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        template = read_chat_template(folder, tokenizer)
        video = {k: v for k, v in read_patch_settings(folder, "video_preprocessor_config.json").items()
                 if k in ("image_mean", "image_std", "rescale_factor")}
        return cls(tokenizer, template, **{**read_patch_settings(folder), "video_settings": video, **options})

    # -- text ------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, Any]]) -> str:
        """The conversation through the checkpoint's chat template, with the generation prompt."""
        return self.tokenizer.apply_chat_template(messages, chat_template=self.chat_template, tokenize=False,
                                                  add_generation_prompt=True)

    def conversation_ids(self, messages: list[dict[str, Any]],
                         video_timestamps: Sequence[Sequence[float]] = ()) -> tuple[int, ...]:
        """Token ids of a rendered conversation, remembered (keyed by its JSON and the videos'
        timestamps): the cost estimate tokenises once and :meth:`encode` reuses the ids.

        Each video placeholder, in order, becomes one ``<t seconds><|vision_start|><|video_pad|>
        <|vision_end|>`` block per timestamp (one pad each, expanded later), as the processor
        writes them before tokenising.
        """
        return self._rendered_ids(json.dumps(messages, sort_keys=True, ensure_ascii=False),
                                  tuple(tuple(t) for t in video_timestamps))

    def _ids_of_json(self, messages_json: str, video_timestamps: tuple[tuple[float, ...], ...]) -> tuple[int, ...]:
        text = self.render(json.loads(messages_json))
        for timestamps in video_timestamps:
            blocks = "".join(f"<{t:.1f} seconds>{VIDEO_PLACEHOLDER.replace(VIDEO_PAD, '<|placeholder|>')}"
                             for t in timestamps)
            if VIDEO_PLACEHOLDER in text:
                text = text.replace(VIDEO_PLACEHOLDER, blocks, 1)
            else:  # a template that writes the pad alone: the processor replaces the pad
                text = text.replace(VIDEO_PAD, blocks, 1)
        return tuple(self.tokenize(text.replace("<|placeholder|>", VIDEO_PAD)))

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer([text], padding=False, truncation=False)["input_ids"][0]

    # -- images ----------------------------------------------------------------------------------

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of ``width x height`` pixels."""
        return smart_resize(height, width, factor=self.factor, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels, floor_at_factor=False, max_ratio=MAX_RATIO)

    def num_image_tokens(self, width: int, height: int) -> int:
        """Merged (32x32-pixel) tokens of an image of ``width x height`` pixels."""
        h, w = self.resized_size(width, height)
        return (h // self.factor) * (w // self.factor)

    def load_image(self, source: ImageSource, *, item_id: str | None = None) -> Image.Image:
        """Decode, convert and resize an image as ``fetch_image`` does."""
        image = decode_image(source, item_id=item_id)
        try:
            h, w = self.resized_size(image.width, image.height)
        except ValueError as exc:
            raise ItemError(item_id, f"image of {image.width}x{image.height} cannot be embedded: {exc}") from None
        return to_rgb(image).resize((w, h))  # an RGB image: PIL's default filter is bicubic

    def patches(self, image: Image.Image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """Normalised patches ``(grid_h * grid_w, 3 * T * P * P)`` and the grid of a resized RGB image."""
        return self.cut_patches(image)

    # -- videos ----------------------------------------------------------------------------------

    def plan_video(self, video: VideoInput, messages: list[dict[str, Any]], images: Sequence[ImageSource] = (), *,
                   fps: float | None = None, max_frames: int | None = None, start: float | None = None,
                   end: float | None = None, item_id: str | None = None) -> VideoPlan:
        """Frames, size and times of ``video``, the one video of ``messages`` (whose image entries
        show ``images``); ``fps`` and ``max_frames`` default to the processor's; ``start`` / ``end``
        (seconds) limit a video file to that time range.

        The reference's plan when it fits: its video and image tokens end within ``max_length`` and
        it has at most ``max_video_tokens`` video tokens. Otherwise the largest frames that fit (down
        to the 1.05 x 128-token floor), then the most frames that fit at the largest size that fits.
        """
        try:
            sampler = ListSampler(self, video, max_frames or self.max_frames, item_id) if isinstance(video, tuple) \
                else FileSampler(self, video, fps or self.fps, max_frames or self.max_frames, item_id, start, end)
            return self._plan_video(sampler, messages, images, item_id)
        except ItemError:
            raise
        except ValueError as exc:  # smart_resize's aspect ratio bound
            raise ItemError(item_id, f"video cannot be embedded: {exc}") from None

    def _plan_video(self, sampler: FrameSampler, messages: list[dict[str, Any]], images: Sequence[ImageSource],
                    item_id: str | None) -> VideoPlan:
        image_tokens = self._image_tokens(images, item_id)

        def fits(plan: VideoPlan) -> bool:
            return self._video_fits(messages, image_tokens, plan, item_id)

        plan = self._largest_frames(sampler, sampler.reference_count, fits)
        if plan is not None:
            return plan
        fewest = FRAME_FACTOR
        if not fits(sampler.plan(fewest, 0)):
            smallest = sampler.plan(fewest, 0)
            raise ItemError(item_id, f"video does not fit even as {fewest} frames of {smallest.width}x"
                                     f"{smallest.height}: {self._budget_words()}; raise max_length")
        low, high = 1, sampler.reference_count // FRAME_FACTOR  # in frame pairs: low fits, high does not
        while high - low > 1:
            middle = (low + high) // 2
            if fits(sampler.plan(middle * FRAME_FACTOR, 0)):
                low = middle
            else:
                high = middle
        return self._largest_frames(sampler, low * FRAME_FACTOR, fits)

    def video_seconds(self, width: int, height: int, messages: list[dict[str, Any]]) -> float:
        """The longest stretch of a ``width x height`` video (the one video of ``messages``) planned
        as the reference plans it, within the token budget: ``max_frames / fps`` seconds when that
        many frames fit, else the seconds of the most frames that fit (at least the 4 sampled from
        any video). Times are written as if late in a long video (5-digit seconds), so that a
        segment anywhere in a video fits."""
        most = self.max_frames // FRAME_FACTOR * FRAME_FACTOR
        for count in range(most, MIN_FRAMES - 1, -FRAME_FACTOR):
            height_, width_ = self.video_frame_size(height, width, count, MODEL_SEQ_LEN * self.factor ** 2 * 0.9)
            times = tuple(LATE_SECONDS + i / self.fps for i in range(count))
            if self._video_fits(messages, [], VideoPlan(tuple(range(count)), times, height_, width_), None):
                return count / self.fps
        return MIN_FRAMES / self.fps

    def load_video(self, video: VideoInput, plan: VideoPlan, *, item_id: str | None = None) -> Video:
        """The planned frames of ``video``, decoded and resized."""
        size = (plan.height, plan.width)
        if isinstance(video, tuple):
            loaded: dict[int, np.ndarray] = {}
            for position in plan.positions:
                if position not in loaded:
                    image = to_rgb(decode_image(video[position], item_id=item_id))
                    # an RGB image: PIL's default filter, bicubic
                    loaded[position] = np.asarray(image.resize(plan.list_size[::-1]))
            frames = resize_frames(np.stack([loaded[p] for p in plan.positions]), *size)
        else:
            frames = read_frames(video, plan.positions, item_id=item_id,
                                 transform=lambda group: resize_frames(group, *size))
        return Video(plan, frames)

    def video_frame_size(self, height: int, width: int, count: int, total_pixels: float,
                         cap: float | None = None) -> tuple[int, int]:
        """(height, width) of ``count`` frames of ``width x height`` as ``fetch_video`` resizes them
        under ``total_pixels``; ``cap`` (pixels) lowers the per-frame bound, not below its floor."""
        min_pixels = VIDEO_MIN_TOKENS * self.factor * self.factor
        floor = int(min_pixels * 1.05)
        max_pixels = max(min(VIDEO_MAX_TOKENS * self.factor * self.factor, total_pixels / count * FRAME_FACTOR), floor)
        if cap is not None:
            max_pixels = max(min(max_pixels, cap), floor)
        return smart_resize(height, width, factor=self.factor, min_pixels=min_pixels, max_pixels=max_pixels,
                            floor_at_factor=False, max_ratio=MAX_RATIO)

    def _largest_frames(self, sampler: FrameSampler, count: int, fits) -> VideoPlan | None:
        """The plan of ``count`` frames with the largest frames that fit (None if none do)."""
        plan = sampler.plan(count, None)
        if fits(plan):
            return plan
        smallest = sampler.plan(count, 0)
        if not fits(smallest):
            return None
        low, high = 0, plan.height * plan.width // self.factor ** 2  # per-frame token caps: low fits, high not
        while high - low > 1:
            middle = (low + high) // 2
            candidate = sampler.plan(count, middle * self.factor ** 2)
            if fits(candidate):
                low, smallest = middle, candidate
            else:
                high = middle
        return smallest

    def _video_fits(self, messages: list[dict[str, Any]], image_tokens: list[int], plan: VideoPlan,
                    item_id: str | None) -> bool:
        timestamps = plan.timestamps(self.temporal_patch_size)
        per_patch = (plan.height // self.factor) * (plan.width // self.factor)
        if self.max_video_tokens is not None and per_patch * len(timestamps) > self.max_video_tokens:
            return False
        ids = self.conversation_ids(messages, [timestamps])
        self._check_vision_tokens(ids, len(image_tokens), len(timestamps), item_id)
        _, end = self._expanded_length(ids, image_tokens, [per_patch] * len(timestamps))
        return end <= self.max_length

    def _budget_words(self) -> str:
        words = f"max_length={self.max_length}"
        return words if self.max_video_tokens is None else f"{words}, max_video_tokens={self.max_video_tokens}"

    # -- sequences -------------------------------------------------------------------------------

    def encode(self, messages: list[dict[str, Any]], images: Sequence[ImageSource] = (), *,
               videos: Sequence[Video] = (), item_id: str | None = None,
               image_ids: Sequence[str | None] | None = None) -> ProcessedInput:
        """Token ids and patches of a conversation whose image entries, in order, show ``images``
        and whose video entries show ``videos`` (planned and loaded).

        Not truncated (see :meth:`truncate`). Raises :class:`ItemError` for an image that cannot be
        used (naming ``image_ids[i]`` when given: a pair's images belong to different items), or
        text that spells a vision special token.
        """
        patches, grids = [], []
        for source, owner in zip(images, image_ids or [item_id] * len(images)):
            pixels, grid = self.patches(self.load_image(source, item_id=owner))
            patches.append(pixels)
            grids.append(grid)
        video_patches, video_grids = [], []
        for video in videos:
            pixels, grid = self.cut_video(video.frames)
            video_patches.append(pixels)
            video_grids.append(grid)
        timestamps = [video.plan.timestamps(self.temporal_patch_size) for video in videos]
        ids = list(self.conversation_ids(messages, timestamps))
        self._check_vision_tokens(ids, len(grids), sum(g[0] for g in video_grids), item_id)
        sizes = {self.image_token_id: iter([gh * gw // self.merge_size ** 2 for _, gh, gw in grids]),
                 self.video_token_id: iter([gh * gw // self.merge_size ** 2 for gt, gh, gw in video_grids
                                            for _ in range(gt)])}
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * next(sizes[token]) if token in sizes else [token])
        return ProcessedInput(expanded, np.concatenate(patches) if patches else None, grids,
                              np.concatenate(video_patches) if video_patches else None, video_grids)

    def count_tokens(self, messages: list[dict[str, Any]], images: Sequence[ImageSource] = (), *,
                     videos: Sequence[VideoPlan] = (), item_id: str | None = None,
                     image_ids: Sequence[str | None] | None = None) -> int:
        """The untruncated length of :meth:`encode`'s ids from the image headers and video plans alone."""
        image_tokens = self._image_tokens(images, item_id, image_ids)
        timestamps = [plan.timestamps(self.temporal_patch_size) for plan in videos]
        ids = self.conversation_ids(messages, timestamps)
        patch_tokens = [(plan.height // self.factor) * (plan.width // self.factor)
                        for plan, times in zip(videos, timestamps) for _ in times]
        self._check_vision_tokens(ids, len(image_tokens), len(patch_tokens), item_id)
        return self._expanded_length(ids, image_tokens, patch_tokens)[0]

    def truncate(self, processed: ProcessedInput, *, item_id: str | None = None) -> ProcessedInput:
        """The first ``max_length`` tokens, as ``truncation=True`` keeps them; an item whose image
        or video tokens would be cut is refused, as the processor refuses it."""
        ids = processed.input_ids
        if len(ids) <= self.max_length:
            return processed
        vision = (self.image_token_id, self.video_token_id)
        if any(token in vision for token in ids[self.max_length:]):
            needed = len(ids) - next(i for i, token in enumerate(reversed(ids)) if token in vision)
            raise ItemError(item_id, f"its image tokens end at position {needed}, beyond max_length="
                                     f"{self.max_length}; raise max_length or lower max_image_tokens")
        return ProcessedInput(ids[: self.max_length], processed.pixel_values, processed.grids,
                              processed.video_pixel_values, processed.video_grids)

    def _image_tokens(self, images: Sequence[ImageSource], item_id: str | None,
                      image_ids: Sequence[str | None] | None = None) -> list[int]:
        """Merged tokens of each image, from its header."""
        tokens = []
        for source, owner in zip(images, image_ids or [item_id] * len(images)):
            width, height = image_size(source, item_id=owner)
            try:
                tokens.append(self.num_image_tokens(width, height))
            except ValueError as exc:
                raise ItemError(owner, f"image of {width}x{height} cannot be embedded: {exc}") from None
        return tokens

    def _expanded_length(self, ids: Sequence[int], image_tokens: Sequence[int],
                         patch_tokens: Sequence[int]) -> tuple[int, int]:
        """(length, end of the last image or video token) of ``ids`` once each image pad, in order,
        becomes ``image_tokens[i]`` tokens and each video pad (one per temporal patch) ``patch_tokens[j]``."""
        sizes = {self.image_token_id: iter(image_tokens), self.video_token_id: iter(patch_tokens)}
        length = end = 0
        for token in ids:
            if token in sizes:
                length += next(sizes[token])
                end = length
            else:
                length += 1
        return length, end

    # -- items ----------------------------------------------------------------------------------

    def cost(self, item: Item) -> int:
        """The item's sequence length (cut at ``max_length``) from its image header and video plan alone."""
        images = [item.image] if item.image is not None else []
        plans = [self.item_video_plan(item)] if item.video is not None else []
        return min(self.count_tokens(embedding_messages(item), images, videos=plans, item_id=item.id),
                   self.max_length)

    def prepare(self, item: Item) -> ProcessedInput:
        """Token ids (cut at ``max_length``) and patches of one item (its video decoded here)."""
        images = [item.image] if item.image is not None else []
        videos = [self.load_video(item.video, self.item_video_plan(item), item_id=item.id)] \
            if item.video is not None else []
        encoded = self.encode(embedding_messages(item), images, videos=videos, item_id=item.id)
        return self.truncate(encoded, item_id=item.id)

    def item_video_plan(self, item: Item) -> VideoPlan:
        """Which frames of the item's video, at what size and times (within the token budget)."""
        images = [item.image] if item.image is not None else []
        return self.plan_video(item.video, embedding_messages(item), images, fps=item.fps, max_frames=item.max_frames,
                               start=item.video_start, end=item.video_end, item_id=item.id)

    def collate(self, prepared: Sequence[ProcessedInput], *,
                padding_side: Literal["right", "left"] = "right") -> dict[str, Any]:
        """Padded rows as transformers' Qwen3-VL forward takes them (right padding for the embedder,
        which pools the last real token; the reranker reads the last position, so pads on the left),
        with the images' patches, grids and token types when the batch has any."""
        ids, mask = pad_ids([p.input_ids for p in prepared], self.pad_token_id, side=padding_side)
        batch: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        grids = [g for p in prepared for g in p.grids]
        video_grids = [g for p in prepared for g in p.video_grids]
        if grids:
            batch.update(pixel_values=torch.from_numpy(np.concatenate([p.pixel_values for p in prepared if p.grids])),
                         image_grid_thw=torch.tensor(grids, dtype=torch.long))
        if video_grids:
            batch.update(pixel_values_videos=torch.from_numpy(np.concatenate([p.video_pixel_values for p in prepared
                                                                              if p.video_grids])),
                         video_grid_thw=torch.tensor(video_grids, dtype=torch.long))
        if grids or video_grids:  # transformers' token types: 0 text, 1 image, 2 video
            batch["mm_token_type_ids"] = (ids == self.image_token_id).int() + 2 * (ids == self.video_token_id).int()
        return batch

    def _check_vision_tokens(self, ids: Sequence[int], n_images: int, n_patches: int, item_id: str | None) -> None:
        if (ids.count(self.image_token_id) != n_images or ids.count(self.video_token_id) != n_patches
                or ids.count(self.vision_start_id) != n_images + n_patches):
            raise ItemError(item_id, f"text must not contain the special tokens {VISION_START}, "
                                     f"{IMAGE_PAD} or {VIDEO_PAD}")


def truncate_keeping_special(ids: Sequence[int], max_length: int, special_ids: set[int], *,
                             closing: int = 5) -> list[int]:
    """Qwen3-VL-Reranker's cut: the last ``closing`` tokens (``<|im_end|>``, the generation prompt)
    are kept aside; if the rest is longer than ``max_length``, every special token of it is kept
    (image tokens included) and only the first ``max_length - #special`` ordinary tokens."""
    head, tail = list(ids[:-closing]), list(ids[-closing:])
    if len(head) <= max_length:
        return head + tail
    budget = max_length - sum(1 for t in head if t in special_ids)
    kept: list[int] = []
    for token in head:
        if token in special_ids:
            kept.append(token)
        elif budget > 0:
            kept.append(token)
            budget -= 1
    return kept + tail


def read_chat_template(folder: Path, tokenizer) -> str:
    """The checkpoint's chat template: ``chat_template.jinja``, ``chat_template.json``, or the tokenizer's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    stored = folder / "chat_template.json"
    if stored.is_file():
        return json.loads(stored.read_text(encoding="utf-8"))["chat_template"]
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    raise ModelNotAvailable(f"{folder}: no chat template (chat_template.jinja or chat_template.json)")
