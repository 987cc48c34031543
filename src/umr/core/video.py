"""Video files: what is in them (frames, rate, size) and their frames, for the families that see video.

Decoding is PyAV's (FFmpeg), chosen over decord, the reader Qwen3-VL-Embedding's reference
(qwen-vl-utils) picks: decord has been unmaintained since 2022 and bundles FFmpeg 4.1, while
PyAV ships a current FFmpeg in wheels for every platform. On 8-bit 4:2:0, 4:2:2 and 4:4:4 video
of even size (H.264, VP9, MJPEG, MPEG-4 Part 2, ProRes, in mp4, webm, mkv, mov and avi), PyAV's
RGB frames equal decord's pixel for pixel; frames are counted, ordered and rotated as decord
does them:

* the frames of a video are its video stream's packets, in presentation order (decord counts
  packets, not the container's claimed frame count);
* its rate is the stream's average frame rate;
* a rotation in the display matrix (phone videos) is applied, so frames are upright.

Only the frames asked for are decoded: the reader seeks to the key frame before each wanted frame
unless it is already decoding that group of pictures, and converts to RGB only the frames it
keeps (``tests/core/test_video.py`` counts the decoded frames). A caller's transform (a resize)
runs on groups of :data:`TRANSFORM_GROUP` frames as they are decoded, so that a video is never
held at full size all at once. Anything that is not a readable video (a missing, empty,
truncated or foreign file, a stream that fails to decode) is an :class:`~umr.core.items.ItemError`
with the reason.
"""

from __future__ import annotations

import bisect
import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .images import MAX_IMAGE_PIXELS
from .items import ItemError, VideoSource

#: what to install when PyAV is missing
INSTALL_HINT = "video needs PyAV: pip install 'umr[video]'"
#: decoded frames handed to ``read_frames``' transform together: PyTorch's antialiased resize computes
#: its filter weights once per call, so a group resizes 3-6x faster than its frames one by one
#: (the same pixels), while memory holds only this many frames at their decoded size
TRANSFORM_GROUP = 8


#: what ``read_frames`` may apply to groups of decoded frames: ``(k, H, W, 3)`` -> ``(k, h, w, 3)`` uint8
Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds, read without decoding more than its first frame."""

    #: frames, counted as the video stream's packets (as decord counts them)
    frames: int
    #: the stream's average frame rate (frames per second)
    fps: float
    #: size of an upright frame (after the display rotation)
    width: int
    height: int
    #: presentation timestamps of the frames, in order (stream time base); None when a packet has none
    pts: tuple[int, ...] | None
    #: presentation timestamps of the key frames (where decoding can start), in order
    keyframe_pts: tuple[int, ...]
    #: counter-clockwise quarter turns that make a frame upright
    quarter_turns: int = 0

    @property
    def duration(self) -> float:
        """Seconds, as frames / rate."""
        return self.frames / self.fps


def probe_video(source: VideoSource, *, item_id: str | None = None) -> VideoInfo:
    """Frames, rate and size of a video, or :class:`ItemError` saying why it cannot be used.

    Reads every packet's header (no decoding) and decodes the first frame, so a file that
    cannot be decoded at all is refused here, before any model work. A file's answer is
    remembered while its size and modification time stay the same.
    """
    if isinstance(source, (bytes, bytearray)):
        return _probe(bytes(source), item_id)
    path = _checked_path(source, item_id)
    stat = path.stat()
    try:
        return _probe_file(str(path), stat.st_size, stat.st_mtime_ns)
    except ItemError as exc:
        raise ItemError(item_id, exc.reason) from None


def read_frames(source: VideoSource, indices: Sequence[int], *, info: VideoInfo | None = None,
                item_id: str | None = None, transform: Transform | None = None) -> np.ndarray:
    """The frames at ``indices`` (positions in presentation order, any order, repeats allowed) as
    one ``(len(indices), height, width, 3)`` uint8 RGB array, decoding only what they need.

    ``transform`` maps ``(k, height, width, 3)`` decoded frames to ``(k, h, w, 3)`` ones (a
    resize), run on every :data:`TRANSFORM_GROUP` frames as they are decoded: memory keeps the
    transformed frames, never the whole video at its decoded size."""
    info = info if info is not None else probe_video(source, item_id=item_id)
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        raise ValueError("no frame indices given")
    if not 0 <= wanted[0] <= wanted[-1] < info.frames:
        raise ValueError(f"frame indices must lie in [0, {info.frames}), got {wanted[0]}..{wanted[-1]}")
    frames = _decode(source, wanted, info, item_id, transform or (lambda group: group))
    return np.stack([frames[i] for i in indices])


# -- opening ---------------------------------------------------------------------------------------


def _av():
    try:
        import av
    except ImportError:
        raise ItemError(None, INSTALL_HINT) from None
    return av


def _checked_path(source: VideoSource, item_id: str | None) -> Path:
    path = Path(source)
    if not path.exists():
        raise ItemError(item_id, f"video file not found: {path}")
    if path.is_dir():
        raise ItemError(item_id, f"video path is a folder: {path}")
    if path.stat().st_size == 0:
        raise ItemError(item_id, f"empty file (0 bytes): {path}")
    return path


def _describe(source: VideoSource) -> str:
    return f"{len(source)} bytes" if isinstance(source, (bytes, bytearray)) else str(source)


def _open(source: VideoSource, item_id: str | None):
    """The container and its video stream (the one FFmpeg ranks best, as decord picks it)."""
    av = _av()
    if isinstance(source, (bytes, bytearray)) and not source:
        raise ItemError(item_id, "empty video (0 bytes)")
    try:
        container = av.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else os.fspath(source))
    except av.error.FFmpegError as exc:
        raise ItemError(item_id, f"not a readable video file ({_describe(source)}): {_ffmpeg_reason(exc)}") from None
    try:
        stream = container.streams.best("video")
    except Exception:  # noqa: BLE001 - a demuxer's stream list
        stream = None
    if stream is None:
        container.close()
        raise ItemError(item_id, f"has no video stream ({_describe(source)})")
    return container, stream


def _ffmpeg_reason(exc: Exception) -> str:
    return getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]


# -- probing ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _probe_file(path: str, size: int, mtime_ns: int) -> VideoInfo:  # noqa: ARG001 - size, mtime: cache key
    return _probe(path, None)


def _probe(source: VideoSource, item_id: str | None) -> VideoInfo:
    av = _av()
    container, stream = _open(source, item_id)
    pts: list[int | None] = []
    keyframes: list[int] = []
    first = None
    try:
        with container:
            for packet in container.demux(stream):
                if packet.size == 0:  # PyAV's end-of-stream flush packet, not one of the file's
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe and packet.pts is not None:
                    keyframes.append(packet.pts)
                if first is None:
                    frames = packet.decode()
                    first = frames[0] if frames else None
            if first is None and pts:  # a decoder that holds frames back until the end
                frames = stream.codec_context.decode(None)
                first = frames[0] if frames else None
    except av.error.FFmpegError as exc:
        raise ItemError(item_id, f"video cannot be read ({_describe(source)}): {_ffmpeg_reason(exc)}") from None
    if not pts or first is None:
        raise ItemError(item_id, f"video has no decodable frame ({_describe(source)})")
    rate = stream.average_rate or stream.guessed_rate
    if not rate or float(rate) <= 0:
        raise ItemError(item_id, f"video has no frame rate ({_describe(source)})")
    turns = _quarter_turns(first)
    width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
    if width * height > MAX_IMAGE_PIXELS:
        raise ItemError(item_id, f"video frames of {width}x{height} pixels are over the limit of "
                                 f"{MAX_IMAGE_PIXELS:,} ({_describe(source)})")
    known = None if any(p is None for p in pts) else tuple(sorted(pts))
    return VideoInfo(frames=len(pts), fps=float(rate), width=width, height=height, pts=known,
                     keyframe_pts=tuple(sorted(keyframes)), quarter_turns=turns)


def _quarter_turns(frame) -> int:
    """Counter-clockwise quarter turns of the display matrix (decord's ``transpose`` filters)."""
    rotation = int(round(getattr(frame, "rotation", 0) or 0))
    return (rotation // 90) % 4


# -- decoding --------------------------------------------------------------------------------------


class _LostTrack(Exception):
    """Seeking did not land where the packet index says: decode from the start instead."""


class _Transformed:
    """Decoded frames by index, the transform run on every :data:`TRANSFORM_GROUP` of them."""

    def __init__(self, transform: Transform):
        self._transform = transform
        self._pending: list[tuple[int, np.ndarray]] = []
        self.frames: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.frames) + len(self._pending)

    def add(self, index: int, frame: np.ndarray) -> None:
        self._pending.append((index, frame))
        if len(self._pending) == TRANSFORM_GROUP:
            self.flush()

    def flush(self) -> dict[int, np.ndarray]:
        if self._pending:
            done = self._transform(np.stack([frame for _, frame in self._pending]))
            self.frames.update(zip((index for index, _ in self._pending), done))
            self._pending = []
        return self.frames


def _decode(source: VideoSource, wanted: list[int], info: VideoInfo, item_id: str | None,
            transform: Transform) -> dict[int, np.ndarray]:
    av = _av()
    try:
        if info.pts is not None and info.keyframe_pts:
            try:
                return _decode_seeking(source, wanted, info, item_id, _Transformed(transform))
            except _LostTrack:
                pass
        return _decode_in_order(source, wanted, info, item_id, _Transformed(transform))
    except av.error.FFmpegError as exc:
        raise ItemError(item_id, f"video cannot be decoded ({_describe(source)}): {_ffmpeg_reason(exc)}") from None


def _decode_seeking(source: VideoSource, wanted: list[int], info: VideoInfo, item_id: str | None,
                    out: _Transformed) -> dict[int, np.ndarray]:
    """Each wanted frame found by its timestamp: a seek to the key frame before it when that key
    frame lies beyond what has been decoded, else decoding on."""
    container, stream = _open(source, item_id)
    stream.thread_type = "AUTO"
    with container:
        frames = None
        last = None  # timestamp of the last decoded frame
        for index in wanted:
            target = info.pts[index]
            key = info.keyframe_pts[max(0, bisect.bisect_right(info.keyframe_pts, target) - 1)]
            if frames is None or last is None or key > last:
                container.seek(key, stream=stream, backward=True, any_frame=False)
                frames = container.decode(stream)
            for frame in frames:
                if frame.pts is None:
                    raise _LostTrack
                last = frame.pts
                if frame.pts == target:
                    out.add(index, _rgb(frame, info))
                    break
                if frame.pts > target:
                    raise _LostTrack
            else:
                raise _LostTrack
    return out.flush()


def _decode_in_order(source: VideoSource, wanted: list[int], info: VideoInfo, item_id: str | None,
                     out: _Transformed) -> dict[int, np.ndarray]:
    """Every frame from the start, keeping the wanted positions (files without timestamps)."""
    container, stream = _open(source, item_id)
    stream.thread_type = "AUTO"
    keep = set(wanted)
    decoded = 0
    with container:
        for position, frame in enumerate(container.decode(stream)):
            decoded = position + 1
            if position in keep:
                out.add(position, _rgb(frame, info))
                if len(out) == len(keep):
                    break
    if len(out) < len(keep):
        raise ItemError(item_id, f"video ends after {decoded} of its {info.frames} frames ({_describe(source)})")
    return out.flush()


def _rgb(frame, info: VideoInfo) -> np.ndarray:
    """An upright RGB frame of the stream's size (a frame of another size is scaled to it, as
    decord's filter graph scales every frame to the first one's size)."""
    width, height = (info.height, info.width) if info.quarter_turns % 2 else (info.width, info.height)
    if (frame.width, frame.height) != (width, height):
        pixels = frame.to_ndarray(format="rgb24", width=width, height=height)
    else:
        pixels = frame.to_ndarray(format="rgb24")
    if info.quarter_turns:
        pixels = np.ascontiguousarray(np.rot90(pixels, info.quarter_turns))
    return pixels
