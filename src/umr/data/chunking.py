"""Long texts as passages that fit the model's window, counted in the model's own tokens.

An embedder reads a fixed number of tokens (:meth:`~umr.models.base.Embedder.text_window`) and
silently drops the rest, so a word that only appears at the end of a long file would never be
found. :class:`Chunker` cuts such texts into overlapping passages of at most ``tokens`` tokens,
preferring to end a passage at a paragraph, line or sentence break near its limit (and never
inside a word when a space is near), and tells
which texts would be cut (``overflows``) where splitting is not possible (captions,
text+image items, ``--no-chunk``). A text embedded with an image (a PDF page's text layer, its
passages each keeping the page image) is split for the room the model leaves beside that image
(:meth:`Chunker.beside_image`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Iterable

import numpy as np

#: texts are tokenised in blocks of about this many characters (cut at whitespace), which
#: bounds the tokenizer's working memory on multi-megabyte files
BLOCK_CHARS = 65_536
#: a passage may end this much earlier than its limit (a fraction of ``tokens``) to end at a break
BREAK_SEARCH = 0.25


#: the id of a long text's N-th passage (N from 1): ``ID#chunk=N``, or ``FILE.pdf#page=P&chunk=N``
#: for a PDF page, whose id already holds a fragment (one fragment, ``&``-joined, as in PDF open
#: parameters)
_PASSAGE_ID = re.compile(r"^(.*)[#&]chunk=([1-9][0-9]*)$")
_PAGE_ID = re.compile(r"#page=[1-9][0-9]*$")
#: a text beside an image gets passages only when at least this many of its tokens fit beside it
MIN_PASSAGE_TOKENS = 32


def passage_id(item_id: str, number: int) -> str:
    return f"{item_id}{'&' if _PAGE_ID.search(item_id) else '#'}chunk={number}"


def stale_passages(stored: Iterable[str], seen: set[str]) -> list[str]:
    """Stored ids that a text read in this run (``seen``) no longer has: passages beyond its
    current count or of a text that now fits whole, and the whole item of a text now split."""
    stale = []
    for item_id in stored:
        if item_id in seen:
            continue
        match = _PASSAGE_ID.match(item_id)
        if match and passage_id(match.group(1), int(match.group(2))) == item_id:
            base = match.group(1)
            if base in seen or passage_id(base, 1) in seen:
                stale.append(item_id)
        elif passage_id(item_id, 1) in seen:
            stale.append(item_id)
    return stale


class ChunkingError(ValueError):
    """Chunk options the model cannot take (a passage larger than its window, a bad overlap)."""


@dataclass(frozen=True)
class Passage:
    """One passage: its text and where it lies in the whole text (character offsets)."""

    text: str
    start: int
    end: int


class Chunker:
    """Splits texts for one embedder.

    ``tokens``: passage size (default and maximum: the model's window); ``overlap``: tokens
    shared by consecutive passages (default ``tokens // 8``); ``enabled=False`` never splits
    but still reports texts that overflow the window. A model with no known window splits only
    when ``tokens`` is given.
    """

    def __init__(self, model, *, tokens: int | None = None, overlap: int | None = None,
                 enabled: bool = True):
        self.model = model
        self.window = model.text_window()
        if tokens is not None:
            if tokens < 1:
                raise ChunkingError(f"--chunk-tokens must be at least 1, not {tokens}")
            if self.window is not None and tokens > self.window:
                raise ChunkingError(f"--chunk-tokens {tokens} is more than {model.name} reads: its window "
                                 f"holds {self.window} tokens of text")
        self.tokens = tokens if tokens is not None else self.window
        if overlap is None:
            overlap = self.tokens // 8 if self.tokens else 0
        if overlap < 0 or (self.tokens is not None and overlap >= self.tokens):
            raise ChunkingError(f"--chunk-overlap must be at least 0 and less than the passage size "
                             f"({self.tokens} tokens), not {overlap}")
        self.overlap = overlap
        self.enabled = enabled

    def beside_image(self, width: int, height: int) -> "Chunker":
        """This chunker for texts embedded together with an image of ``width x height`` pixels
        (a PDF page's passages each keep the page image): the window is what the model reads
        beside such an image (:meth:`~umr.models.base.Embedder.text_window_beside_image`), a
        passage at most that long and the overlap at most 1/8 of it. With less room than
        :data:`MIN_PASSAGE_TOKENS`, texts are not split (and are reported as cut)."""
        window = self.model.text_window_beside_image(width, height)
        if window is None or window == self.window:
            return self
        fitted = copy.copy(self)
        fitted.window = max(int(window), 0)
        if self.tokens is not None and self.tokens > fitted.window:
            fitted.tokens = fitted.window
            fitted.overlap = min(self.overlap, fitted.window // 8)
        fitted.enabled = self.enabled and fitted.window >= MIN_PASSAGE_TOKENS
        return fitted

    @property
    def splits(self) -> bool:
        """Whether long texts are split (on, and a passage size is known)."""
        return self.enabled and self.tokens is not None

    def settings(self) -> dict:
        """What determines the passages, for the index to record."""
        return {"enabled": self.enabled, "tokens": self.tokens, "overlap": self.overlap}

    def fits_bytes(self, size: int) -> bool:
        """Whether any text of ``size`` UTF-8 bytes surely fits one passage (no need to read it)."""
        return self.tokens is not None and size + 1 <= self.tokens

    def spans(self, text: str) -> np.ndarray:
        """``(n, 2)`` character spans of the model's tokens in ``text``."""
        parts = []
        for offset, block in _blocks(text):
            found = self.model.token_spans(block)
            if found:
                parts.append(np.asarray(found, dtype=np.int64) + offset)
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)

    def overflows(self, text: str | None) -> bool:
        """Whether the model would cut ``text`` (more tokens than its window)."""
        if not text or self.window is None or _surely_within(text, self.window):
            return False
        return len(self.spans(text)) > self.window

    def split(self, text: str) -> list[Passage]:
        """``text`` as passages (one passage, the whole text, when it fits or splitting is off)."""
        if not self.splits or _surely_within(text, int(self.tokens)):
            return [Passage(text, 0, len(text))]
        spans = self.spans(text)
        n, size = len(spans), int(self.tokens)
        if n <= size:
            return [Passage(text, 0, len(text))]
        passages, start = [], 0
        while True:
            end = min(start + size, n)
            if end < n:
                end = _break_before(text, spans, start, end, lowest=start + max(self.overlap + 1,
                                                                               int(size * (1 - BREAK_SEARCH))))
            a, b = int(spans[start, 0]), int(spans[end - 1, 1])
            passages.append(Passage(text[a:b], a, b))
            if end >= n:
                return passages
            start = _word_start(text, spans, end - self.overlap, end) if self.overlap else end


def _surely_within(text: str, tokens: int) -> bool:
    """True when ``text`` cannot make more than ``tokens`` tokens, without tokenising it: no
    tokenizer makes more tokens than UTF-8 bytes, plus one for a leading word marker (``▁``)."""
    return len(text) * 4 + 1 <= tokens or len(text.encode("utf-8")) + 1 <= tokens  # see Chunker.fits_bytes


def _blocks(text: str):
    """``(offset, block)`` pieces of ``text`` of about :data:`BLOCK_CHARS`, cut after whitespace."""
    start = 0
    while start < len(text):
        end = min(start + BLOCK_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            if cut > start:
                end = cut + 1
        yield start, text[start:end]
        start = end


def _break_before(text: str, spans: np.ndarray, start: int, end: int, *, lowest: int) -> int:
    """The passage end (exclusive token index) in ``[lowest, end]`` at the best break, latest
    first: a blank line, a line break, a sentence end, a space (not inside a word); else ``end``."""
    best, best_rank = end, 0
    for e in range(end, max(lowest, start + 1) - 1, -1):
        gap = text[spans[e - 1, 1]: spans[e, 0]]
        if "\n\n" in gap:
            return e
        rank = 3 if "\n" in gap else 2 if gap and text[spans[e - 1, 1] - 1] in ".!?" else 1 if gap else 0
        if rank > best_rank:
            best, best_rank = e, rank
    return best


def _word_start(text: str, spans: np.ndarray, start: int, end: int) -> int:
    """The first token in ``[start, end)`` that begins a word (``start`` if none does)."""
    for s in range(start, end):
        if s == 0 or spans[s, 0] > spans[s - 1, 1]:
            return s
    return start
