"""Items and modalities: the one vocabulary every model, index and benchmark speaks.

A query or a candidate is text, an image, or both ("fused"); or a video, alone or with text.
Modality names are spelled as M-BEIR spells them so benchmark files round-trip unchanged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

from PIL import Image

#: What an item's image may be: a file path, encoded bytes, or a decoded PIL image.
ImageSource = Union[str, Path, bytes, Image.Image]
#: What an item's video file may be: a path or the file's bytes.
VideoSource = Union[str, Path, bytes]
#: What an item's video may be: a video file, or its frames in order (each an image).
VideoInput = Union[VideoSource, Sequence[ImageSource]]


class Modality(str, enum.Enum):
    """The modality of an item, with M-BEIR's spelling as the value."""

    TEXT = "text"
    IMAGE = "image"
    FUSED = "image,text"
    VIDEO = "video"
    VIDEO_TEXT = "video,text"

    @classmethod
    def parse(cls, value: "str | Modality", among: "Sequence[Modality] | None" = None) -> "Modality":
        """Accept M-BEIR spellings and the obvious aliases (``text,image``, ``fused``); ``among``
        limits the names a format knows (M-BEIR has no video: :data:`IMAGE_TEXT_MODALITIES`)."""
        allowed = tuple(cls) if among is None else tuple(among)
        key = value.value if isinstance(value, Modality) else str(value).strip().lower().replace(" ", "")
        aliases = {"text,image": "image,text", "fused": "image,text", "txt": "text", "img": "image",
                   "vid": "video", "text,video": "video,text"}
        key = aliases.get(key, key)
        if key not in {m.value for m in allowed}:
            shown = value.value if isinstance(value, Modality) else value
            raise ValueError(f"unknown modality {shown!r}: use one of {', '.join(m.value for m in allowed)}")
        return cls(key)

    def __str__(self) -> str:  # print as M-BEIR spells it
        return self.value


@dataclass
class Item:
    """One thing to embed: text, an image, or both; or a video, alone or with text; in the role
    of a query or a candidate.

    ``instruction`` is the task instruction and only applies to queries; candidates are
    always embedded without one, as GME and MM-Embed do. ``id`` and ``metadata`` travel
    with the item so errors and search results can name it.

    ``video`` is a video file (path or bytes) or its frames in order (a list of images).
    ``fps`` (frames sampled per second of a video file) and ``max_frames`` (the most frames
    sampled) override the model's own for this item; ``video_start`` / ``video_end`` (seconds,
    qwen-vl-utils' names) keep a time range of a video file (a segment of a long video); only families that see video
    (``Embedder.sees_video``: Qwen3-VL-Embedding) take video items, the others refuse them as
    item errors.

    One rule for empty text, in the API, ``umr embed``, ``umr search`` and the index: a text
    that is empty or only whitespace is *no text* (``text`` becomes None). Beside an image the
    item is that image; alone the item has no content and is refused as an :class:`ItemError`.

    ``error`` is a reader's verdict on a record that cannot be an item (a field of the wrong type,
    no id, a line that is not JSON): benchmark readers keep such a record in its place as a
    failed item (:meth:`failed`) rather than stopping, so it is counted and named with the items
    that cannot be embedded. :attr:`problem` says why an item cannot be embedded, whichever it is.
    """

    text: str | None = None
    image: ImageSource | None = None
    instruction: str | None = None
    is_query: bool = False
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    video: VideoInput | None = None
    fps: float | None = None
    max_frames: int | None = None
    video_start: float | None = None
    video_end: float | None = None

    def __post_init__(self) -> None:
        if self.text is not None and not isinstance(self.text, str):
            raise TypeError(f"item {self.id!r}: text must be a string, got {type(self.text).__name__}")
        if self.image is not None and not isinstance(self.image, (str, Path, bytes, Image.Image)):
            raise TypeError(
                f"item {self.id!r}: image must be a path, bytes or a PIL image, "
                f"got {type(self.image).__name__}"
            )
        if self.instruction is not None and not isinstance(self.instruction, str):
            raise TypeError(f"item {self.id!r}: instruction must be a string")
        if self.text is not None and not self.text.strip():
            self.text = None
        self._check_video()
        if self.error is not None and (self.text is not None or self.image is not None or self.video is not None):
            raise ValueError(f"item {self.id!r}: a failed item holds no text, image or video")

    def _check_video(self) -> None:
        """Types of ``video``, ``fps`` and ``max_frames``; a frame list becomes a tuple (its order is
        its timing)."""
        where = f"item {self.id!r}"
        if isinstance(self.video, (list, tuple)):
            if not self.video:
                raise ValueError(f"{where}: a video given as frames needs at least one frame")
            bad = next((f for f in self.video if not isinstance(f, (str, Path, bytes, Image.Image))), None)
            if bad is not None:
                raise TypeError(f"{where}: video frames must be paths, bytes or PIL images, got {type(bad).__name__}")
            self.video = tuple(self.video)
        elif self.video is not None and not isinstance(self.video, (str, Path, bytes)):
            raise TypeError(f"{where}: video must be a path, bytes or a list of frames, got {type(self.video).__name__}")
        if (self.fps is not None or self.max_frames is not None) and self.video is None:
            raise ValueError(f"{where}: fps and max_frames apply to a video")
        for name in ("video_start", "video_end"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(self.video, (str, Path, bytes)):
                raise ValueError(f"{where}: {name} applies to a video file")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{where}: {name} must be a number of seconds (0 or more), got {value!r}")
        if self.video_start is not None and self.video_end is not None and self.video_end <= self.video_start:
            raise ValueError(f"{where}: video_end ({self.video_end}) must come after video_start ({self.video_start})")
        if self.fps is not None:
            if isinstance(self.video, tuple):
                raise ValueError(f"{where}: fps applies to a video file; a list of frames is timed at 2 frames "
                                 f"per second, as qwen-vl-utils times it")
            if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not 0 < self.fps < float("inf"):
                raise ValueError(f"{where}: fps must be a positive number, got {self.fps!r}")
        if self.max_frames is not None and (isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int)
                                            or self.max_frames < 2):
            raise ValueError(f"{where}: max_frames must be a whole number of at least 2, got {self.max_frames!r}")

    @property
    def problem(self) -> str | None:
        """Why this item cannot be embedded (its record's error, or no content), else None."""
        if self.error is not None:
            return self.error
        if self.video is not None and self.image is not None:
            return "holds both a video and an image: give one of them per item"
        if self.text is None and self.image is None and self.video is None:
            return "has neither text nor image (an empty or blank text is no text)"
        return None

    @property
    def modality(self) -> Modality:
        """TEXT, IMAGE, FUSED, VIDEO or VIDEO_TEXT; an :class:`ItemError` naming the item for one with
        a :attr:`problem` or with both a video and an image."""
        if self.video is not None:
            if self.image is not None:
                raise ItemError(self.id, self.problem)
            return Modality.VIDEO if self.text is None else Modality.VIDEO_TEXT
        if self.text is not None and self.image is not None:
            return Modality.FUSED
        if self.image is not None:
            return Modality.IMAGE
        if self.text is not None:
            return Modality.TEXT
        raise ItemError(self.id, self.problem)

    @classmethod
    def failed(cls, id: str | None, error: str, *, is_query: bool = False) -> "Item":
        """A record that could not be read, kept in its place: every consumer reports it as this
        item's error (``error``), as it reports an item that cannot be embedded."""
        return cls(is_query=is_query, id=id, error=error)

    @classmethod
    def query(cls, text: str | None = None, image: ImageSource | None = None, *,
              instruction: str | None = None, id: str | None = None, video: VideoInput | None = None,
              fps: float | None = None, max_frames: int | None = None, video_start: float | None = None,
              video_end: float | None = None, **metadata: Any) -> "Item":
        return cls(text=text, image=image, instruction=instruction, is_query=True, id=id, metadata=metadata,
                   video=video, fps=fps, max_frames=max_frames, video_start=video_start, video_end=video_end)

    @classmethod
    def candidate(cls, text: str | None = None, image: ImageSource | None = None, *,
                  id: str | None = None, video: VideoInput | None = None, fps: float | None = None,
                  max_frames: int | None = None, video_start: float | None = None, video_end: float | None = None,
                  **metadata: Any) -> "Item":
        return cls(text=text, image=image, is_query=False, id=id, metadata=metadata, video=video, fps=fps,
                   max_frames=max_frames, video_start=video_start, video_end=video_end)


#: the modalities of M-BEIR and of training data: text, images and both (video is umr's own)
IMAGE_TEXT_MODALITIES = (Modality.TEXT, Modality.IMAGE, Modality.FUSED)

#: what ``encode_*`` take as one item (anything else is a sequence of items)
SINGLE_VALUES = (Item, str, Image.Image, Path, bytes, dict)


def as_items(values: "list[Item | str | Image.Image] | tuple", *, is_query: bool,
             instruction: str | None = None) -> list[Item]:
    """Normalise what users pass to ``encode_*`` (items, strings, PIL images) into items.

    ``instruction`` fills in queries that carry none of their own; it is ignored for
    candidates because candidates are embedded without instructions.
    """
    if isinstance(values, SINGLE_VALUES):
        raise TypeError("as_items takes a list of items; wrap a single item in a list")
    items: list[Item] = []
    for i, value in enumerate(values):
        if isinstance(value, Item):
            item = Item(text=value.text, image=value.image, instruction=value.instruction,
                        is_query=is_query, id=value.id if value.id is not None else str(i),
                        metadata=value.metadata, error=value.error, video=value.video, fps=value.fps,
                        max_frames=value.max_frames, video_start=value.video_start, video_end=value.video_end)
        elif isinstance(value, str):
            item = Item(text=value, is_query=is_query, id=str(i))
        elif isinstance(value, (Image.Image, Path, bytes)):
            item = Item(image=value, is_query=is_query, id=str(i))
        elif isinstance(value, dict):
            item = Item(text=value.get("text"), image=value.get("image"),
                        instruction=value.get("instruction"), is_query=is_query,
                        id=str(value.get("id", i)), video=value.get("video"), fps=value.get("fps"),
                        max_frames=value.get("max_frames"), video_start=value.get("video_start"),
                        video_end=value.get("video_end"))
        else:
            raise TypeError(f"item {i}: cannot embed a {type(value).__name__}; pass an Item, a string or an image")
        if is_query and item.instruction is None:
            item.instruction = instruction
        if not is_query:
            item.instruction = None
        items.append(item)
    return items


class ItemError(ValueError):
    """A bad input item; names the item (and its input line, when known) and the reason."""

    def __init__(self, item_id: str | None, reason: str, *, line: int | None = None,
                 index: int | None = None):
        self.item_id = item_id
        self.reason = reason
        self.line = line
        #: position of the item in the list that was being embedded
        self.index = index
        where = f"line {line}, " if line is not None else ""
        name = repr(item_id) if item_id is not None else "<no id>"
        super().__init__(f"{where}item {name}: {reason}")

    @classmethod
    def from_exception(cls, item_id: str | None, exc: BaseException, *, context: str = "") -> "ItemError":
        """The error of one item that raised ``exc`` (a PIL plug-in, resize arithmetic, OCR...):
        ``context``, the exception's type and the first line of its message — one bad file reads
        as one line."""
        if isinstance(exc, ItemError):
            return exc
        kind = type(exc).__name__ if type(exc).__module__ == "builtins" else \
            f"{type(exc).__module__}.{type(exc).__name__}"  # struct.error, not a bare "error"
        lines = str(exc).strip().splitlines()
        message = f"{kind}: {lines[0][:300]}" if lines else kind
        return cls(item_id, f"{context}: {message}" if context else message)

    def __reduce__(self):
        """Pickled whole (an exception pickles only its message by default): errors found by
        worker processes (Ray) come back to the driver as they were."""
        return (_item_error, (self.item_id, self.reason, self.line, self.index))

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "id": self.item_id, "error": self.reason}

    def at(self, *, index: int | None = None, line: int | None = None) -> "ItemError":
        """The same error, located at an input position and/or line."""
        return ItemError(self.item_id, self.reason,
                         line=self.line if line is None else line,
                         index=self.index if index is None else index)


def _item_error(item_id, reason, line, index) -> ItemError:
    return ItemError(item_id, reason, line=line, index=index)
