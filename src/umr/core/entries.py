"""A corpus entry before it is loaded: what every corpus reader yields and the index consumes.

An entry knows its id and a content fingerprint *before* anything is decoded, so a re-run can say
"unchanged" cheaply; :meth:`Entry.load` builds the :class:`~umr.core.items.Item` and raises
:class:`~umr.core.items.ItemError` for a bad file. Its :class:`EntryKind` says what it is in the
corpus (a photo stays an image even when a text-only model reads its words).
"""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .items import Item, Modality


class EntryKind(str, enum.Enum):
    """What an entry is in its corpus; the value is how it has always been spelled."""

    TEXT = "text"
    IMAGE = "image"
    #: an image with a caption: a sidecar ``NAME.txt``, or a JSONL / M-BEIR line with both
    CAPTIONED_IMAGE = "image+caption"
    #: a PDF page (its rendered image and its text layer), or one passage of such a page
    PDF_PAGE = "pdf page"
    #: an item given whole to ``Index.add`` with text and image
    FUSED = "image,text"
    #: a video file of a folder, or one time segment of it
    VIDEO = "video"
    #: a video item given with text beside it (a JSONL line, ``Index.add``), or one time segment of it
    VIDEO_TEXT = "video,text"

    def __str__(self) -> str:
        return self.value

    def modality(self, *, kept_text: bool) -> Modality:
        """The modality of such an entry as it is in the corpus: an image stays an image under a
        text-only model; a captioned image or a PDF page is fused when its text was kept."""
        if self in (EntryKind.CAPTIONED_IMAGE, EntryKind.PDF_PAGE):
            return Modality.FUSED if kept_text else Modality.IMAGE
        return Modality(self.value)


@dataclass
class Entry:
    """One corpus item before it is loaded."""

    id: str
    fingerprint: str
    loader: Callable[[], Item] = field(repr=False)
    path: str | None = None
    kind: EntryKind = EntryKind.TEXT
    meta: dict[str, Any] = field(default_factory=dict)
    #: False for ids umr made up (a JSONL line without ``id``): the index qualifies them by file
    explicit_id: bool = True

    def __post_init__(self) -> None:
        self.kind = EntryKind(self.kind)

    def load(self) -> Item:
        item = self.loader()
        item.id = self.id
        return item


@dataclass
class ReadReport:
    """What a reader passed over or reshaped, filled in while it reads (for the index summary)."""

    #: ``(name, kind, reason)`` of every file or folder not read; kind is the extension
    #: (``.html``), ``hidden``, ``link`` (a folder reached again through a symlink) or ``special``
    ignored: list[tuple[str, str, str]] = field(default_factory=list)
    #: texts (files, JSONL items) and PDF pages split into passages, and how many passages they gave
    split_texts: int = 0
    split_pages: int = 0
    passages: int = 0
    #: the smallest passage size a split PDF page got beside its image, where that is below the chunk size
    page_passage_tokens: int | None = None
    #: ids of loaded items whose text is longer than the model's window (the model cuts it)
    truncated: list[str] = field(default_factory=list)

    def ignore(self, name: str, kind: str, reason: str) -> None:
        self.ignored.append((name, kind, reason))

    def split(self, kind: EntryKind, passages: int) -> None:
        """One text or PDF page (``kind``) became ``passages`` passages."""
        if kind == EntryKind.PDF_PAGE:
            self.split_pages += 1
        else:
            self.split_texts += 1
        self.passages += passages

    def ignored_by_kind(self) -> Counter:
        return Counter(kind for _, kind, _ in self.ignored)
