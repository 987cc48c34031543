"""Whole PDF pages are searchable (issue 20): a page whose text layer is longer than the model
reads becomes passages (``FILE.pdf#page=P&chunk=N``), each keeping the page (its number, and its
image, which a fused MLLM embeds with the passage inside the same window); a password-protected
PDF is reported as such, not as broken."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from PIL import Image

from umr.cli import main
from umr.data.chunking import Chunker
from umr.core.entries import ReadReport
from umr.data.corpus import read_corpus
from umr.index import Index
from umr.models.base import Embedder
from umr.core.items import ItemError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "pdf"
SENTENCE = "The zeppelin hangar at Cardington was painted a pale shade of lavender."
FILLER = ["The committee reviewed the quarterly budget and approved the new schedule for road repairs.",
          "Residents asked about parking near the market square on weekends.",
          "The library will extend its opening hours during the examination period.",
          "A survey of street lighting found several lamps that need replacing.",
          "Volunteers planted forty trees along the river path in the autumn."]


def pdf_with_text(pages: list[list[str]], **layout) -> bytes:
    """The samples' hand-written PDF with a real text layer (``samples/build_samples.py``)."""
    spec = importlib.util.spec_from_file_location("build_samples", ROOT / "samples" / "build_samples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.pdf_with_text(pages, **layout)


def council_report(folder: Path) -> Path:
    """``report.pdf``: a cover page, a dense page (about 1,400 tokens) with :data:`SENTENCE` near
    its end, and a short page."""
    folder.mkdir(parents=True, exist_ok=True)
    dense = [FILLER[i % len(FILLER)] for i in range(60)]
    dense.insert(58, SENTENCE)
    short = [FILLER[i % len(FILLER)] for i in range(8)]
    (folder / "report.pdf").write_bytes(pdf_with_text([["Council report", "A short cover page."], dense, short],
                                                      font_size=9, leading=11))
    return folder


class Words(Embedder):
    """Reads ``window`` whitespace words; an image beside the text takes ``image_tokens`` of them
    (a family that reads text and image in one sequence), none by default (text read apart)."""

    name, dim = "words", 4

    def __init__(self, window=40, image_tokens=0):
        self.window, self.image_tokens = window, image_tokens

    def text_window(self):
        return self.window

    def text_window_beside_image(self, width, height):
        return self.window - self.image_tokens

    def _cost(self, item):
        return 1

    def _embed_batch(self, items):
        raise AssertionError("not embedded in these tests")


def _word_pages(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    long = [" ".join(f"w{10 * line + i}" for i in range(10)) for line in range(10)]  # 100 words, 10 a line
    (folder / "r.pdf").write_bytes(pdf_with_text([["a short first page"], long, ["a short last page"]],
                                                 font_size=9, leading=11))
    return folder


def _read(folder, chunker):
    report = ReadReport()
    return {e.id: e for e in read_corpus(folder, chunker=chunker, report=report)}, report


def test_a_long_page_becomes_passages_that_keep_the_page(tmp_path):
    folder = _word_pages(tmp_path / "c")
    entries, report = _read(folder, Chunker(Words(40), overlap=0))
    assert sorted(entries) == ["r.pdf#page=1", "r.pdf#page=2&chunk=1", "r.pdf#page=2&chunk=2",
                               "r.pdf#page=2&chunk=3", "r.pdf#page=3"]
    assert (report.split_pages, report.split_texts, report.passages) == (1, 0, 3)
    page = entries["r.pdf#page=1"].load()
    third = entries["r.pdf#page=2&chunk=3"]
    assert third.kind == "pdf page" and third.path == str((folder / "r.pdf").resolve())
    assert third.meta == {"file": "r.pdf", "folder": ".", "ext": "pdf", "page": 2, "chunk": 3, "chunks": 3,
                          "offset": third.meta["offset"]}
    passages = [entries[f"r.pdf#page=2&chunk={n}"].load() for n in (1, 2, 3)]
    assert [p.text.split() for p in passages] == [[f"w{i}" for i in range(a, b)] for a, b in ((0, 40), (40, 80),
                                                                                              (80, 100))]
    for passage in passages:  # every passage holds the page's pixels
        assert isinstance(passage.image, Image.Image) and passage.image.size == page.image.size
        assert max(passage.image.size) == 1280
    whole = _read(folder, Chunker(Words(400)))[0]["r.pdf#page=2"].load()
    assert whole.text[third.meta["offset"]:].startswith(passages[2].text)
    assert report.truncated == []
    # fingerprints: stable run to run, one per passage
    again, _ = _read(folder, Chunker(Words(40), overlap=0))
    assert {i: e.fingerprint for i, e in again.items()} == {i: e.fingerprint for i, e in entries.items()}
    assert len({e.fingerprint for e in entries.values()}) == 5


def test_a_fused_family_splits_for_the_room_the_page_image_leaves(tmp_path):
    folder = _word_pages(tmp_path / "c")
    apart, _ = _read(folder, Chunker(Words(80), overlap=0))  # text read apart from the image: 80 words
    assert sorted(i for i in apart if "&chunk=" in i) == ["r.pdf#page=2&chunk=1", "r.pdf#page=2&chunk=2"]
    entries, report = _read(folder, Chunker(Words(80, image_tokens=40), overlap=0))
    passages = [e.load() for i, e in sorted(entries.items()) if i.startswith("r.pdf#page=2&")]
    assert [len(p.text.split()) for p in passages] == [40, 40, 20]
    assert report.passages == 3 and report.truncated == []
    # the image leaves less than a passage's worth of room (MIN_PASSAGE_TOKENS): not split, reported as cut
    entries, report = _read(folder, Chunker(Words(80, image_tokens=60)))
    assert sorted(entries) == ["r.pdf#page=1", "r.pdf#page=2", "r.pdf#page=3"]
    for entry in entries.values():
        entry.load()
    assert report.truncated == ["r.pdf#page=2"] and report.passages == 0


def test_no_chunk_keeps_one_item_a_page_and_lists_what_the_model_cuts(tmp_path):
    folder = _word_pages(tmp_path / "c")
    entries, report = _read(folder, Chunker(Words(40), enabled=False))
    assert sorted(entries) == ["r.pdf#page=1", "r.pdf#page=2", "r.pdf#page=3"]
    assert entries["r.pdf#page=2"].load().text.split()[-1] == "w99"
    assert report.truncated == ["r.pdf#page=2"] and report.passages == 0


@pytest.mark.slow
def test_a_sentence_at_the_end_of_a_long_page_is_found_with_minilm(tmp_path, capsys):
    corpus = council_report(tmp_path / "c")
    index = tmp_path / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "minilm", "--no-progress"]) == 0
    out = capsys.readouterr().out
    with Index.open(index) as ix:
        records = {r["id"]: r for r in ix.store.records()}
    passages = sorted(i for i in records if i.startswith("c/report.pdf#page=2&chunk="))
    assert len(passages) >= 4 and sorted(records) == ["c/report.pdf#page=1", *passages, "c/report.pdf#page=3"]
    assert f"split 1 PDF page(s) into {len(passages)} passages of at most 254 tokens (overlap 31)" in out
    assert "cut to its window" not in out
    assert all(records[i]["meta"]["page"] == 2 and records[i]["via"] == "text layer" for i in passages)

    assert main(["search", "--index", str(index), SENTENCE, "--json", "-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["id"] == f"c/report.pdf#page=2&chunk={len(passages)}"
    assert top["meta"]["page"] == 2 and top["path"] == str((corpus / "report.pdf").resolve())
    import umr

    minilm = umr.load_model("minilm")
    entries = {e.id: e for e in read_corpus(corpus, chunker=Chunker(minilm))}
    assert SENTENCE in entries[top["id"].removeprefix("c/")].load().text

    assert main(["index", str(corpus), "--index", str(index), "--no-progress"]) == 0
    assert f"unchanged {len(passages) + 2}," in capsys.readouterr().out

    # --no-chunk: today's one item a page, the dense page cut (and not what the sentence finds)
    whole = tmp_path / "whole"
    assert main(["index", str(corpus), "--index", str(whole), "--model", "minilm", "--no-progress",
                 "--no-chunk"]) == 0
    assert "1 item(s) longer than minilm reads were cut to its window: c/report.pdf#page=2" in capsys.readouterr().out
    assert main(["search", "--index", str(whole), SENTENCE, "--json", "-k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] != "c/report.pdf#page=2"

    # split differently: the whole page goes, then the passages beyond the new count
    for tokens in (100, 254):
        assert main(["index", str(corpus), "--index", str(whole), "--no-progress", "--chunk-tokens", str(tokens)]) == 0
        capsys.readouterr()
        with Index.open(whole) as ix:
            ids = sorted(ix.ids())
        assert ids == sorted(f"c/{e.id}" for e in read_corpus(corpus, chunker=Chunker(minilm, tokens=tokens)))
    assert ids == sorted(records)


def test_gme_passages_hold_the_page_image_and_fit_beside_it(tiny_gme_dir, tmp_path, capsys):
    """A fused MLLM reads image and text in one window: each passage is the page image plus text
    that fits in what the image leaves of the window, nothing cut."""
    import umr

    corpus = council_report(tmp_path / "c")
    options = ["--max-length", "300", "--max-image-tokens", "64", "--min-image-tokens", "4"]
    assert main(["index", str(corpus), "--index", str(tmp_path / "ix"), "--model", str(tiny_gme_dir),
                 *options, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "errors 0" in out and "cut to its window" not in out
    model = umr.load_model(tiny_gme_dir, max_length=300, max_image_tokens=64, min_image_tokens=4)
    room = model.text_window_beside_image(931, 1280)  # the 612 x 842 pt pages, rendered
    assert f"of at most {model.text_window()} tokens (overlap {model.text_window() // 8}; beside a page image, " \
           f"what the image leaves: down to {room})" in out
    with Index.open(tmp_path / "ix") as ix:
        records = {r["id"]: r for r in ix.store.records()}
        assert ix.config["chunking"]["tokens"] == model.text_window() > 200
    chunker = Chunker(model)
    passages = [r for i, r in records.items() if "&chunk=" in i]
    assert 2 in {r["meta"]["page"] for r in passages} and all(r["via"] == "pixels+text" for r in passages)
    entries = {e.id: e for e in read_corpus(corpus, chunker=chunker)}
    items = [entries[r["id"].removeprefix("c/")].load() for r in passages]
    assert items[0].image.size == (931, 1280)
    assert room == chunker.tokens - model.processor.num_image_tokens(*items[0].image.size) - 2  # + vision start/end
    assert max(len(model.token_spans(i.text)) for i in items) <= room
    processor = model.processor
    cut = [processor.prepare(item).input_ids for item in items]
    processor.max_length = 10 ** 6
    assert cut == [processor.prepare(item).input_ids for item in items]  # every passage whole, image and all


def test_a_password_protected_pdf_is_reported_as_encrypted(tmp_path):
    import shutil

    from hashing import HashEmbedder

    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("password-protected.pdf", "owner-password-only.pdf"):
        shutil.copy(FIXTURES / name, folder / name)
    found = {}
    for entry in read_corpus(folder):
        found[entry.item_id if isinstance(entry, ItemError) else entry.id] = entry
    assert sorted(found) == ["owner-password-only.pdf#page=1", "password-protected.pdf"]
    assert found["password-protected.pdf"].reason == "encrypted (a password is needed)"
    # a PDF with only an owner password (printing, editing restricted) opens and is read
    assert found["owner-password-only.pdf#page=1"].load().text.startswith("Minutes of the allotment committee")
    with Index.create(tmp_path / "ix", HashEmbedder()) as index:
        summary = index.index_corpus(folder)
    assert summary.added == 1
    assert [(e["id"], e["error"]) for e in summary.errors] == [("c/password-protected.pdf",
                                                               "encrypted (a password is needed)")]
