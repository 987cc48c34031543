"""Video files of a corpus folder as time segments: what ``umr index`` stores for a long video.

A video longer than one segment becomes one entry per segment, with the Media Fragments id
``clips/talk.mp4#t=120,150`` and metadata ``start`` / ``end`` (seconds); a video no longer than
one segment is one entry under its own path (``start`` 0, ``end`` its duration). Each entry
embeds the frames of its time range, sampled as qwen-vl-utils samples ``video_start`` /
``video_end`` (``Item(video=..., video_start=..., video_end=...)``).

The segment length is ``seconds`` when given, else the model's *video window* for the file's
frame size (:meth:`umr.models.base.Embedder.video_seconds`): the longest stretch it embeds at its
sampling without shrinking frames or passing ``max_length``. Consecutive segments may overlap by
``overlap`` seconds, so that an event at a boundary is whole in one of them; a tail shorter than
a second joins the segment before it. A file that cannot be probed (empty, truncated, not a
video) is one :class:`~umr.core.items.ItemError` with the reason; under a model that cannot
see video every video file is one, and the rest of the folder is indexed.

A video *item* given to an index (a JSONL line with ``"video"``, ``Index.add``) is cut the same
way under its own id (``talk#t=120,150``), its text, ``fps``, ``max_frames`` and metadata going
with every segment (:func:`item_video_entries`); a list of frames, or a file with its own
``video_start`` / ``video_end``, is one entry.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator

from ..core.entries import Entry, EntryKind
from ..core.fingerprint import FileDigests, item_fingerprint
from ..core.items import Item, ItemError
from ..core.video import probe_video

VIDEO_EXTENSIONS = {".mp4", ".mov", ".webm", ".mkv", ".avi"}
#: a last segment shorter than this (seconds) joins the one before it
SHORTEST_TAIL = 1.0


class SegmentError(ValueError):
    """Segment settings that cannot cut a video (a length of 0, an overlap as long as a segment)."""


@dataclass(frozen=True)
class VideoSegmenter:
    """How an index cuts its video files: a fixed ``seconds`` or the model's window, and an
    ``overlap``; ``window`` is None under a model that cannot see video (``refusal`` says why)."""

    window: Callable[[int, int], float] | None
    seconds: float | None = None
    overlap: float = 0.0
    refusal: str = "the model cannot embed video"

    #: the settings of an index that never recorded any (the model's window, no overlap)
    DEFAULTS: ClassVar[dict[str, Any]] = {"seconds": None, "overlap": 0.0}

    def __post_init__(self) -> None:
        if self.seconds is not None and not self.seconds > 0:
            raise SegmentError(f"segment seconds must be positive, got {self.seconds:g}")
        if self.overlap < 0 or (self.seconds is not None and self.overlap >= self.seconds):
            raise SegmentError(f"segment overlap must be at least 0 and below the segment length "
                               f"({self.seconds:g} s), got {self.overlap:g}")

    def settings(self) -> dict[str, Any]:
        """What the index records, so that a re-run cuts the same segments (None: the model's window)."""
        return {"seconds": self.seconds, "overlap": self.overlap}

    def length_for(self, width: int, height: int) -> float:
        """Seconds per segment of a ``width x height`` video."""
        if self.seconds is not None or self.window is None:
            return self.seconds
        return max(1.0, float(math.floor(self.window(width, height))))


def video_segmenter(model, recorded: dict[str, Any] | None, *, seconds: float | None = None,
                    overlap: float | None = None) -> VideoSegmenter:
    """How an index over ``model`` cuts videos: the settings given, else those ``recorded`` by the
    last run (default: the model's window, no overlap). ``model`` is an
    :class:`~umr.models.base.Embedder`; one that cannot see video gets a segmenter that refuses."""
    recorded = recorded or {}
    if seconds is None:
        seconds = recorded.get("seconds")
        if overlap is None:
            overlap = recorded.get("overlap")
    window = model.video_seconds if model.sees_video else None
    refusal = (f"{model.name} cannot embed video; index video files with a model that sees video "
               f"(qwen3-vl-embedding-2b or -8b)")
    return VideoSegmenter(window, None if seconds is None else float(seconds), float(overlap or 0.0), refusal)


def segment_times(duration: float, seconds: float, overlap: float = 0.0) -> list[tuple[float, float]]:
    """``(start, end)`` of each segment of a ``duration``-second video: one when it fits in
    ``seconds``; else every ``seconds - overlap`` seconds, the last ending at ``duration`` (a tail
    under :data:`SHORTEST_TAIL` joins the segment before it)."""
    if duration <= seconds:
        return [(0.0, duration)]
    step = seconds - overlap
    times = []
    start = 0.0
    while start + overlap < duration:
        times.append((start, min(start + seconds, duration)))
        start = len(times) * step  # not a running sum: no drift over a long video
    if len(times) > 1 and times[-1][1] - times[-1][0] < SHORTEST_TAIL + overlap:
        times.pop()
        times[-1] = (times[-1][0], duration)
    return [(round(s, 3), round(e, 3)) for s, e in times]


def segment_id(name: str, start: float, end: float) -> str:
    """``name#t=start,end`` (Media Fragments): whole seconds without decimals."""
    return f"{name}#t={_seconds(start)},{_seconds(end)}"


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}".rstrip("0").rstrip(".")


def stale_segments(stored: Iterable[str], seen: set[str]) -> list[str]:
    """Stored ids that a video read in this run (``seen``) no longer has: segments of another cut
    (other settings, a changed file) and the whole item of a video now cut, or the segments of a
    video now whole."""
    cut = {item_id.split("#t=", 1)[0] for item_id in seen if "#t=" in item_id}
    stale = []
    for item_id in stored:
        if item_id in seen:
            continue
        base, is_segment, _ = item_id.partition("#t=")
        if (is_segment and (base in cut or base in seen)) or (not is_segment and item_id in cut):
            stale.append(item_id)
    return stale


def format_span(start: float, end: float | None) -> str:
    """``2:00-2:30`` (``1:02:03`` past an hour; tenths where a time has them), as a player shows times."""
    return f"{_clock(start)}-{_clock(end)}" if end is not None else _clock(start)


def _clock(seconds: float) -> str:
    whole, tenths = divmod(round(seconds * 10), 10)
    hours, rest = divmod(int(whole), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{text}.{tenths}" if tenths else text


def video_entries(path: Path, rel: str, digest: str, stored: str, meta: dict[str, Any],
                  segmenter: VideoSegmenter | None) -> Iterator[Entry | ItemError]:
    """The entries of one video file (see the module docstring), or its error."""
    if segmenter is None or segmenter.window is None:
        yield ItemError(rel, segmenter.refusal if segmenter is not None else "video files need a model that sees video")
        return
    try:
        info = probe_video(path, item_id=rel)
    except ItemError as exc:
        yield ItemError(rel, exc.reason)
        return
    duration = info.duration
    times = segment_times(duration, segmenter.length_for(info.width, info.height), segmenter.overlap)
    whole = len(times) == 1
    for start, end in times:
        item_id = rel if whole else segment_id(rel, start, end)
        fingerprint = hashlib.blake2b(f"{digest}:{start}:{end}:{whole}".encode(), digest_size=16).hexdigest()
        yield Entry(item_id, fingerprint, _loader(str(path), item_id, None if whole else (start, end)), stored,
                    EntryKind.VIDEO, {**meta, "start": start, "end": end})


def item_video_entries(item: Item, item_id: str, segmenter: VideoSegmenter | None, *,
                       digests: FileDigests | None = None, explicit_id: bool = True) -> Iterator[Entry | ItemError]:
    """The entries of a video item given to an index (see the module docstring), or its error."""
    if segmenter is None or segmenter.window is None:
        yield ItemError(item_id, segmenter.refusal if segmenter is not None
                        else "video items need a model that sees video")
        return
    meta = dict(item.metadata)
    kind = EntryKind.VIDEO if item.text is None else EntryKind.VIDEO_TEXT
    if not isinstance(item.video, (str, Path)):  # a list of frames, or a video's bytes: one entry, no player
        load = _item_loader(item, item.video, item_id, item.video_start, item.video_end)
        yield Entry(item_id, item_fingerprint(load(), digests=digests), load, None, kind, meta,
                    explicit_id=explicit_id)
        return
    path = str(Path(item.video).expanduser().resolve())  # stored resolved: results play from anywhere
    try:
        info = probe_video(path, item_id=item_id)
    except ItemError as exc:
        yield ItemError(item_id, exc.reason)
        return
    if item.video_start is not None or item.video_end is not None:
        times = [(item.video_start or 0.0, item.video_end if item.video_end is not None else info.duration)]
        spans = [(item.video_start, item.video_end)]
    else:
        times = segment_times(info.duration, segmenter.length_for(info.width, info.height), segmenter.overlap)
        spans = [(None, None)] if len(times) == 1 else times
    for (start, end), span in zip(times, spans):
        entry_id = item_id if len(times) == 1 else segment_id(item_id, start, end)
        load = _item_loader(item, path, entry_id, *span)
        yield Entry(entry_id, item_fingerprint(load(), digests=digests), load, path, kind,
                    {**meta, "start": start, "end": end}, explicit_id=explicit_id)


def _item_loader(item: Item, video, item_id: str, start: float | None, end: float | None) -> Callable[[], Item]:
    """The candidate embedded for one entry of a video item: its video (or a time range of it) and text."""
    def load() -> Item:
        return Item(text=item.text, video=video, fps=item.fps, max_frames=item.max_frames, video_start=start,
                    video_end=end, id=item_id, metadata=dict(item.metadata))

    return load


def _loader(path: str, item_id: str, span: tuple[float, float] | None) -> Callable[[], Item]:
    def load() -> Item:
        start, end = span if span is not None else (None, None)
        return Item.candidate(video=path, video_start=start, video_end=end, id=item_id)

    return load
