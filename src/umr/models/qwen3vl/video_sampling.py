"""How Qwen3-VL-Embedding samples a video, as qwen-vl-utils (0.0.14) samples it for the reference.

A :class:`VideoPlan` says which frames, at what size and at which times; a sampler makes the plan
for any frame count and per-frame pixel cap (:class:`FileSampler` for a video file, optionally a
time range ``[start, end]`` as qwen-vl-utils' ``video_start`` / ``video_end``;
:class:`ListSampler` for a list of frames). :class:`~.processing_qwen3vl.Qwen3VLProcessor` picks
the plan that fits its token budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch

from ...core.images import image_size
from ...core.items import ImageSource, ItemError, VideoSource
from ...core.video import VideoInfo, probe_video
from ..qwen_vl_patches import smart_resize

#: qwen-vl-utils' bound on an image's (and a frame's) aspect ratio
MAX_RATIO = 200
#: qwen-vl-utils' merged tokens per video frame (``VIDEO_MIN_TOKEN_NUM`` / ``VIDEO_MAX_TOKEN_NUM``)
VIDEO_MIN_TOKENS = 128
VIDEO_MAX_TOKENS = 768
#: frames sampled from a file at least (``FPS_MIN_FRAMES``), always an even count (``FRAME_FACTOR``)
MIN_FRAMES = 4
FRAME_FACTOR = 2
#: qwen-vl-utils' pixel budget of one video file (``MODEL_SEQ_LEN`` tokens x 0.9, its default) and the
#: embedder's for a list of frames (``MAX_TOTAL_PIXELS``: ``LIST_FRAMES`` frames of 768 tokens)
MODEL_SEQ_LEN = 128000
LIST_FRAMES = 10
#: a list of frames: timed at 2 frames per second, first resized to multiples of twice the factor
#: with 4 to 16,384 such tokens (qwen-vl-utils' image defaults at that factor)
LIST_FPS = 2.0
LIST_MIN_TOKENS, LIST_MAX_TOKENS = 4, 16384


@dataclass(frozen=True)
class VideoPlan:
    """How one video becomes model input: which frames, at what size, at which times."""

    #: the frames to use, in order: frame indices of a file, or positions in a list of frames
    positions: tuple[int, ...]
    #: the time of each of them, in seconds
    seconds: tuple[float, ...]
    #: the size every frame is resized to
    height: int
    width: int
    #: a list of frames: the size each frame is first resized to (``fetch_image``)
    list_size: tuple[int, int] | None = None

    def timestamps(self, temporal_patch_size: int) -> tuple[float, ...]:
        """One time per temporal patch: the mean of its first and last frames' times."""
        t = temporal_patch_size
        return tuple((self.seconds[i] + self.seconds[i + t - 1]) / 2 for i in range(0, len(self.seconds), t))


class FrameSampler(Protocol):
    """What :meth:`Qwen3VLProcessor.plan_video` needs of a video: its reference frame count and
    the plan for any frame count and per-frame pixel cap."""

    reference_count: int

    def plan(self, count: int, cap: float | None) -> VideoPlan: ...


class FrameSizer(Protocol):
    """What a sampler needs of the processor: the pixel factor and how frames are resized."""

    factor: int

    def video_frame_size(self, height: int, width: int, count: int, total_pixels: float,
                         cap: float | None = None) -> tuple[int, int]: ...


class FileSampler:
    """A video file's frames as ``fetch_video`` samples them (``smart_nframes``, then ``linspace``)."""

    def __init__(self, processor: FrameSizer, source: VideoSource, fps: float, max_frames: int, item_id: str | None,
                 start: float | None = None, end: float | None = None):
        self.processor = processor
        self.info = probe_video(source, item_id=item_id)
        self.first, self.last = frame_range(self.info, start, end, item_id)
        total = self.last - self.first + 1
        fewest = math.ceil(MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
        most = math.floor(max_frames / FRAME_FACTOR) * FRAME_FACTOR
        count = min(min(max(total / self.info.fps * fps, fewest), most), total)
        count = math.floor(count / FRAME_FACTOR) * FRAME_FACTOR
        if count < FRAME_FACTOR:
            where = "video has" if start is None and end is None else "the time range holds"
            raise ItemError(item_id, f"{where} {total} frame(s); at least {FRAME_FACTOR} are needed")
        self.reference_count = count

    def plan(self, count: int, cap: float | None) -> VideoPlan:
        # float32, as fetch_video computes it
        indices = torch.linspace(self.first, self.last, count).round().long().tolist()
        factor = self.processor.factor
        height, width = self.processor.video_frame_size(self.info.height, self.info.width, count,
                                                        MODEL_SEQ_LEN * factor * factor * 0.9, cap)
        return VideoPlan(tuple(indices), tuple(i / self.info.fps for i in indices), height, width)


def frame_range(info: VideoInfo, start: float | None, end: float | None, item_id: str | None) -> tuple[int, int]:
    """First and last frame of ``[start, end]`` seconds, as ``calculate_video_frame_range`` finds
    them: times clamped to the video, the first frame at or after ``start``, the last at or before
    ``end``; the whole video without either."""
    if start is None and end is None:
        return 0, info.frames - 1
    duration = info.frames / info.fps
    first = 0 if start is None else math.ceil(max(0.0, min(start, duration)) * info.fps)
    last = info.frames - 1 if end is None else min(math.floor(max(0.0, min(end, duration)) * info.fps),
                                                    info.frames - 1)
    if first >= last:
        raise ItemError(item_id, f"the time range {start if start is not None else 0:g}-"
                                 f"{end if end is not None else duration:g} s holds no two frames of the video "
                                 f"({info.frames} frames at {info.fps:g} per second, {duration:.2f} s)")
    return first, last


class ListSampler:
    """A list of frames as the reference embedder and ``fetch_video`` take it."""

    def __init__(self, processor: FrameSizer, frames: Sequence[ImageSource], max_frames: int,
                 item_id: str | None):
        self.processor, self.frames, self.item_id = processor, frames, item_id
        self.sizes: dict[int, tuple[int, int]] = {}
        positions = self._thinned(max_frames) if len(frames) > max_frames else list(range(len(frames)))
        if len(positions) % FRAME_FACTOR:
            positions += [positions[-1]] * (FRAME_FACTOR - len(positions) % FRAME_FACTOR)
        self.positions = tuple(positions)
        self.reference_count = len(positions)

    def plan(self, count: int, cap: float | None) -> VideoPlan:
        positions = self.positions if count >= self.reference_count else tuple(self._thinned(count))
        height, width = self._list_size(positions)
        factor = self.processor.factor
        size = self.processor.video_frame_size(height, width, len(positions),
                                               LIST_FRAMES * VIDEO_MAX_TOKENS * factor * factor, cap)
        return VideoPlan(positions, tuple(i / LIST_FPS for i in range(len(positions))), *size,
                         list_size=(height, width))

    def _thinned(self, count: int) -> list[int]:
        """``sample_frames``: ``count`` positions spread over the list, truncated to integers."""
        return np.linspace(0, len(self.frames) - 1, count, dtype=int).tolist()

    def _list_size(self, positions: Sequence[int]) -> tuple[int, int]:
        """The one size ``fetch_image`` (factor 64) gives the frames at ``positions``."""
        factor = 2 * self.processor.factor
        for position in positions:
            if position not in self.sizes:
                width, height = image_size(self.frames[position], item_id=self.item_id)
                self.sizes[position] = smart_resize(height, width, factor=factor,
                                                    min_pixels=LIST_MIN_TOKENS * factor * factor,
                                                    max_pixels=LIST_MAX_TOKENS * factor * factor,
                                                    floor_at_factor=False, max_ratio=MAX_RATIO)
        sizes = sorted({self.sizes[p] for p in positions})
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for h, w in sizes)
            raise ItemError(self.item_id, f"the frames of a video must resize to one size, got {shown}")
        return sizes[0]
