"""The items JSONL format shared by ``umr embed`` and ``umr index``.

One object per line: ``id``, ``text`` (string or null), ``image`` (a path relative to the
JSONL file's folder, or absolute, or null; read as an absolute path; a URL is refused, not
fetched), ``video`` (a video file's path as ``image``, or a list of frame image paths, or null;
with ``fps``, ``max_frames``, ``video_start`` and ``video_end`` for that item), ``instruction`` (string or null), ``is_query``
(bool). Other fields are kept as metadata. A bad line yields an :class:`ItemError` naming
its line and id instead of stopping the read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from ..core.items import Item, ItemError
from .files import (display_name, is_storable, is_url, parse_json_record, resolve_path, string_field,
                    url_refusal)

_STRING_FIELDS = ("text", "image", "instruction")
_VIDEO_FIELDS = ("video", "fps", "max_frames", "video_start", "video_end")


def read_items_jsonl(path: str | Path) -> Iterator[tuple[int, Item | ItemError]]:
    """Yield ``(line_number, item_or_error)`` for every non-blank line of ``path``."""
    path = Path(path)
    base = path.parent.resolve()  # image paths are stored absolute: they open from anywhere
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for line_no, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            yield line_no, parse_item_line(raw, line_no=line_no, base=base)


def parse_item_line(raw: str, *, line_no: int, base: Path) -> Item | ItemError:
    record = parse_json_record(raw, line=line_no)
    if isinstance(record, ItemError):
        return record
    item_id = record.get("id")
    item_id = None if item_id is None else str(item_id)
    if "\\ud" in raw.lower() and not is_storable(json.dumps(record, ensure_ascii=False)):
        return ItemError(None if item_id is None else display_name(item_id),
                         "holds a lone surrogate escape (\\udXXX), which is not valid Unicode", line=line_no)
    try:
        for name in _STRING_FIELDS:
            string_field(record, name, item_id)
    except ItemError as exc:
        return exc.at(line=line_no)
    is_query = record.get("is_query", False)
    if not isinstance(is_query, bool):
        return ItemError(item_id, f"field 'is_query' must be true or false, got {type(is_query).__name__}",
                         line=line_no)
    text, image, video = record.get("text"), record.get("image"), record.get("video")
    if text is None and image is None and video is None:
        return ItemError(item_id, "has neither text nor image", line=line_no)
    if video is not None and not (isinstance(video, str) or (isinstance(video, list) and video
                                                             and all(isinstance(f, str) for f in video))):
        return ItemError(item_id, "field 'video' must be a path, a non-empty list of frame paths or null",
                         line=line_no)
    paths = [image] + (video if isinstance(video, list) else [video])
    url = next((value for value in paths if value is not None and is_url(value)), None)
    if url is not None:
        return ItemError(item_id, url_refusal("image" if url == image else "video", url), line=line_no)
    image = _absolute(base, image)
    video = [_absolute(base, frame) for frame in video] if isinstance(video, list) else _absolute(base, video)
    metadata = {k: v for k, v in record.items()
                if k not in ("id", "is_query", *_STRING_FIELDS, *_VIDEO_FIELDS)}
    try:
        return Item(text=text, image=image, instruction=record.get("instruction") if is_query else None,
                    is_query=is_query, id=item_id, metadata=metadata, video=video, fps=record.get("fps"),
                    max_frames=record.get("max_frames"), video_start=record.get("video_start"),
                    video_end=record.get("video_end"))
    except (TypeError, ValueError) as exc:  # fps, max_frames: the item names itself in the message
        return ItemError(item_id, str(exc).split(": ", 1)[-1], line=line_no)


def _absolute(base: Path, value: str | None) -> str | None:
    """A path value resolved against the JSONL's folder (stored absolute: it opens from anywhere)."""
    value = resolve_path(base, value)
    return str(Path(value).resolve()) if value is not None and "://" not in value else value
