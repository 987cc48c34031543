"""Splitting long texts into passages counted in the model's tokens (here: words, window 40)."""

from __future__ import annotations

import json

import pytest

from umr.data.chunking import Chunker
from umr.core.entries import ReadReport
from umr.data.corpus import read_corpus
from umr.models.base import Embedder, word_spans


class WordWindow(Embedder):
    """Reads at most ``window`` words (the base class's default token spans)."""

    name, dim = "words-40", 4

    def __init__(self, window=40):
        self.window = window

    def text_window(self):
        return self.window

    def _cost(self, item):
        return 1

    def _embed_batch(self, items):
        raise AssertionError("not embedded in these tests")


def _words(n, prefix="w"):
    return " ".join(f"{prefix}{i}" for i in range(n))


def test_passages_fit_the_window_overlap_and_cover_the_text():
    text = _words(1000)
    chunker = Chunker(WordWindow(), overlap=8)
    passages = chunker.split(text)
    words = [p.text.split() for p in passages]
    assert all(len(w) <= 40 for w in words) and len(passages) == 31  # ceil((1000 - 8) / 32)
    assert words[0][0] == "w0" and words[-1][-1] == "w999"
    for previous, current in zip(words, words[1:]):
        assert previous[-8:] == current[:8]  # the overlap, in tokens
    for p in passages:
        assert text[p.start:p.end] == p.text
    assert chunker.overflows(text) and not chunker.overflows(_words(40))
    assert Chunker(WordWindow()).overlap == 5  # default: an eighth of the passage


def test_passages_end_at_paragraph_breaks_when_one_is_near():
    paragraphs = [_words(30, prefix=f"p{k}.") for k in range(6)]
    passages = Chunker(WordWindow(), overlap=0).split("\n\n".join(paragraphs))
    assert [p.text for p in passages] == paragraphs  # 30 words fit 40, 60 do not


def test_a_short_text_or_no_known_window_is_one_passage():
    assert len(Chunker(WordWindow()).split(_words(40))) == 1

    class NoWindow(WordWindow):
        def text_window(self):
            return None

    unknown = Chunker(NoWindow())
    assert unknown.tokens is None and not unknown.splits and not unknown.overflows(_words(10_000))
    assert len(unknown.split(_words(10_000))) == 1
    assert len(Chunker(NoWindow(), tokens=100).split(_words(1000))) > 1  # an explicit size still splits
    assert Embedder.text_window(WordWindow()) is None  # the ABC's documented default
    assert Embedder.token_spans(WordWindow(), "a  bb\nccc") == word_spans("a  bb\nccc") == [(0, 1), (3, 5), (6, 9)]


def test_bad_chunk_options_are_refused():
    with pytest.raises(ValueError, match="more than words-40 reads"):
        Chunker(WordWindow(), tokens=41)
    with pytest.raises(ValueError, match="less than the passage size"):
        Chunker(WordWindow(), tokens=10, overlap=10)
    with pytest.raises(ValueError, match="at least 1"):
        Chunker(WordWindow(), tokens=0)


def test_text_files_and_jsonl_texts_become_passages_with_their_place(tmp_path):
    folder = tmp_path / "c"
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "report.txt").write_text(_words(100))
    (folder / "short.md").write_text(_words(10))
    report = ReadReport()
    chunker = Chunker(WordWindow(), overlap=0)
    entries = {e.id: e for e in read_corpus(folder, chunker=chunker, report=report)}
    assert sorted(entries) == ["notes/report.txt#chunk=1", "notes/report.txt#chunk=2",
                               "notes/report.txt#chunk=3", "short.md"]
    third = entries["notes/report.txt#chunk=3"]
    assert third.meta == {"file": "notes/report.txt", "folder": "notes", "ext": "txt", "chunk": 3,
                          "chunks": 3, "offset": len(_words(80)) + 1}
    assert third.load().text == " ".join(f"w{i}" for i in range(80, 100))
    assert third.path == str((folder / "notes" / "report.txt").resolve())
    assert (report.split_texts, report.passages, report.truncated) == (1, 3, [])
    # a passage that did not change keeps its fingerprint when the file grows
    (folder / "notes" / "report.txt").write_text(_words(100) + " extra words at the end")
    grown = {e.id: e.fingerprint for e in read_corpus(folder, chunker=chunker)}
    assert grown["notes/report.txt#chunk=1"] == entries["notes/report.txt#chunk=1"].fingerprint
    assert grown["notes/report.txt#chunk=3"] != third.fingerprint

    lines = [{"id": "long", "text": _words(50), "shop": "north"},
             {"id": "fused", "text": _words(50), "image": "x.png"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    report = ReadReport()
    entries = {e.id: e for e in read_corpus(tmp_path / "items.jsonl", chunker=chunker, report=report)}
    assert sorted(entries) == ["fused", "long#chunk=1", "long#chunk=2"]
    assert entries["long#chunk=2"].meta == {"shop": "north", "chunk": 2, "chunks": 2, "offset": len(_words(40)) + 1}
    assert report.passages == 2


def test_texts_the_model_cuts_are_counted_when_not_split(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "long.txt").write_text(_words(100))
    (folder / "fits.txt").write_text(_words(40))
    report = ReadReport()
    entries = list(read_corpus(folder, chunker=Chunker(WordWindow(), enabled=False), report=report))
    assert sorted(e.id for e in entries) == ["fits.txt", "long.txt"]
    for entry in entries:
        entry.load()
    assert report.truncated == ["long.txt"] and report.passages == 0


def test_pdf_page_passages_join_the_page_fragment_and_go_stale_like_text_passages():
    from umr.data.chunking import passage_id, stale_passages

    assert passage_id("docs/report.pdf#page=3", 2) == "docs/report.pdf#page=3&chunk=2"
    assert passage_id("notes/report.txt", 2) == "notes/report.txt#chunk=2"
    assert passage_id("a#b.txt", 1) == "a#b.txt#chunk=1"  # a '#' in a file name is not a page
    page = "r.pdf#page=3"
    stored = [page, f"{page}&chunk=1", f"{page}&chunk=2", f"{page}&chunk=3", "r.pdf#page=4", "x&chunk=2"]
    # the page now splits into two passages: its whole item and the third passage go
    assert stale_passages(stored, {f"{page}&chunk=1", f"{page}&chunk=2", "r.pdf#page=4"}) == [page, f"{page}&chunk=3"]
    # the page now fits whole (or --no-chunk): its passages go; an id that only looks like one stays
    assert stale_passages(stored, {page, "r.pdf#page=4", "x"}) == [f"{page}&chunk=1", f"{page}&chunk=2",
                                                                  f"{page}&chunk=3"]
