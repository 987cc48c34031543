"""Indexing what real folders hold: names that are not UTF-8, files umr does not read, symlinks,
URLs in JSONL, long texts split into passages, and compaction from the CLI."""

from __future__ import annotations

import json
import os

import pytest

from umr.cli import main
from umr.data.files import fs_path

LATIN1_NAME = b"caf\xe9 cr\xe8me.txt"  # "café crème.txt" as a Windows / zip archive writes it


def _latin1_folder(root):
    root.mkdir()
    (root / "good.txt").write_text("the lighthouse keeper climbs the stairs")
    (root / "sub").mkdir()
    (root / "sub" / "other.md").write_text("a violin concerto in the evening")
    with open(os.path.join(os.fsencode(root), LATIN1_NAME), "wb") as handle:
        handle.write(b"an espresso on the terrace of the corner cafe")
    from PIL import Image

    Image.new("RGB", (16, 16), (0, 90, 200)).save(os.fsdecode(os.path.join(os.fsencode(root), b"photo \xe0.png")))
    with open(os.path.join(os.fsencode(root), b"photo \xe0.txt"), "wb") as handle:  # its caption sidecar
        handle.write(b"a blue tram at the depot")
    return root


def test_a_file_name_that_is_not_utf8_is_indexed_searchable_and_unchanged(tmp_path, make_index):
    folder = _latin1_folder(tmp_path / "c")
    index = make_index(ocr=False)
    summary = index.index_corpus(folder)
    assert (summary.added, summary.errors) == (4, [])
    photo = index.search("blue tram depot", k=1)[0]
    assert photo.id == "c/photo \\xe0.png" and photo.modality == "image,text"
    assert os.path.isfile(fs_path(photo.path))
    hit = index.search("espresso terrace cafe", k=1)[0]
    assert hit.id == "c/caf\\xe9 cr\\xe8me.txt"  # the undecodable bytes, shown
    assert os.fsencode(fs_path(hit.path)) == os.path.join(os.fsencode(folder.resolve()), LATIN1_NAME)
    with open(fs_path(hit.path), "rb") as handle:  # the stored path opens the real file
        assert handle.read().startswith(b"an espresso")
    again = index.index_corpus(folder)
    assert (again.added, again.updated, again.unchanged, again.errors) == (0, 0, 4, [])


def test_skipped_files_are_counted_by_extension_and_listed(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "note.txt").write_text("harbour fog at dawn")
    for name in ("page.html", "table.csv", "more.csv", "data.json", "script.py", "README"):
        (corpus / name).write_text("x")
    (corpus / ".git").mkdir()
    (corpus / ".git" / "config").write_text("x")
    os.mkfifo(corpus / "pipe.txt")  # opening it would wait forever for a writer
    index = tmp_path / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "hash-test", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "added 1," in out and "errors 0" in out
    assert ("ignored 8 file(s) umr does not read: 2 .csv, 1 .html, 1 .json, 1 .py, 1 hidden, "
            "1 no extension, 1 special") in out, out
    ignored = {e["id"]: e for e in map(json.loads, (index / "errors.jsonl").read_text().splitlines())
               if e["kind"] == "ignored"}
    assert set(ignored) == {f"c/{name}" for name in ("page.html", "table.csv", "more.csv", "data.json",
                                                     "script.py", "README", ".git/", "pipe.txt")}
    assert "not a file type umr reads" in ignored["c/page.html"]["error"]


def test_symlinks_are_followed_once_and_loops_are_safe(tmp_path):
    from umr.core.entries import ReadReport
    from umr.data.corpus import read_corpus
    from umr.core.items import ItemError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "far.txt").write_text("a note kept elsewhere")
    corpus = tmp_path / "c"
    (corpus / "a").mkdir(parents=True)
    (corpus / "a" / "one.txt").write_text("one")
    (corpus / "a" / "loop").symlink_to(corpus)             # a loop back to the root
    (corpus / "linked").symlink_to(outside)                # a folder elsewhere
    (corpus / "again").symlink_to(outside)                 # the same folder a second time
    (corpus / "alias.txt").symlink_to(corpus / "a" / "one.txt")
    (corpus / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    report = ReadReport()
    found = list(read_corpus(corpus, report=report))
    ids = sorted(e.id for e in found if not isinstance(e, ItemError))
    errors = {e.item_id: e.reason for e in found if isinstance(e, ItemError)}
    assert ids == ["a/one.txt", "again/far.txt", "alias.txt"]
    assert "broken symbolic link" in errors["dangling.txt"]
    assert sorted(name for name, kind, _ in report.ignored if kind == "link") == ["a/loop/", "linked/"]


def test_a_jsonl_image_url_is_refused_as_a_url(tmp_path):
    from umr.data.corpus import read_corpus
    from umr.core.items import ItemError

    lines = [{"id": "web", "image": "https://example.com/cat.jpg", "text": "a cat"},
             {"id": "local", "image": "file:///tmp/cat.jpg"},
             {"id": "ok", "text": "plain text"}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    found = list(read_corpus(tmp_path / "c.jsonl"))
    errors = {e.item_id: e.reason for e in found if isinstance(e, ItemError)}
    assert set(errors) == {"web", "local"}
    assert "'https://example.com/cat.jpg': URLs are not supported" in errors["web"]
    assert "'file:///tmp/cat.jpg': URLs are not supported" in errors["local"]


def test_compact_from_the_cli(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"{i}.txt").write_text(f"note number {i} " * 20)
    index = tmp_path / "ix"
    base = ["index", str(corpus), "--index", str(index), "--no-progress"]
    assert main(base + ["--model", "hash-test"]) == 0
    for i in range(5):
        (corpus / f"{i}.txt").write_text(f"changed note {i} " * 20)
    assert main(base) == 0  # every row replaced: the old ones are dead weight
    capsys.readouterr()
    from umr.index import Index

    def rows_on_disk() -> int:
        return sum(len(p.read_text().splitlines()) for p in index.glob("seg-*.jsonl"))

    assert rows_on_disk() == 10
    assert main(["index", "--index", str(index), "--compact"]) == 0
    out = capsys.readouterr().out
    assert f"compacted {index}" in out and "5 items" in out
    assert rows_on_disk() == 5
    with Index.open(index) as ix:
        assert sorted(ix.ids()) == [f"c/{i}.txt" for i in range(5)]
    assert main(["index", "--index", str(index)]) == 2
    assert main(base + ["--compact"]) == 0
    assert "unchanged 5" in capsys.readouterr().out


FILLER = ("The community garden opens at eight. Volunteers water the beds of beans, tomatoes and "
          "squash, pull weeds along the paths and write the day's harvest on the board by the shed. ")


def _long_document(root):
    """A text far longer than minilm's window whose only mention of zeppelins is its last paragraph."""
    root.mkdir()
    paragraphs = [FILLER * 3 for _ in range(12)]
    paragraphs.append("At dusk a silver zeppelin drifted over the allotments, its engines humming.")
    (root / "long.txt").write_text("\n\n".join(paragraphs))
    (root / "balloons.txt").write_text("Hot-air balloons and airships rise because warm air is light.")
    (root / "kitchen.txt").write_text("Soup of the day: leek and potato, served with bread.")
    return root


@pytest.mark.slow
def test_a_word_in_the_last_paragraph_of_a_long_file_finds_it(tmp_path, capsys):
    corpus = _long_document(tmp_path / "c")
    index = tmp_path / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "minilm", "--no-progress"]) == 0
    out = capsys.readouterr().out
    from umr.index import Index

    with Index.open(index) as ix:
        passages = sorted((r for r in ix.store.records() if r["id"].startswith("c/long.txt")),
                          key=lambda r: r["meta"]["chunk"])
        assert len(passages) >= 5 and [r["meta"]["chunk"] for r in passages] == list(range(1, len(passages) + 1))
        assert all(r["id"] == f"c/long.txt#chunk={r['meta']['chunk']}" for r in passages)
        assert all(r["meta"]["chunks"] == len(passages) for r in passages)
        assert ix.config["chunking"] == {"enabled": True, "tokens": 254, "overlap": 31}
    assert f"added {len(passages) + 2}," in out
    assert f"split 1 long text(s) into {len(passages)} passages of at most 254 tokens (overlap 31)" in out
    assert "cut to its window" not in out

    assert main(["search", "--index", str(index), "zeppelin", "--json", "-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["id"] == f"c/long.txt#chunk={len(passages)}" and "zeppelin" in (corpus / "long.txt").read_text()
    assert top["path"] == str((corpus / "long.txt").resolve()) and top["meta"]["file"] == "long.txt"
    text = (corpus / "long.txt").read_text()
    assert text[top["meta"]["offset"]:].startswith(top["text"][:100])

    # the same command again: every passage unchanged; --no-chunk counts what the model cuts
    assert main(["index", str(corpus), "--index", str(index), "--no-progress"]) == 0
    assert f"unchanged {len(passages) + 2}," in capsys.readouterr().out
    whole = tmp_path / "whole"
    assert main(["index", str(corpus), "--index", str(whole), "--model", "minilm", "--no-progress", "--no-chunk"]) == 0
    out = capsys.readouterr().out
    assert "added 3," in out and "1 item(s) longer than minilm reads were cut to its window: c/long.txt" in out
    assert main(["index", str(corpus), "--index", str(whole), "--no-progress", "--chunk-tokens", "128"]) == 0
    out = capsys.readouterr().out
    assert "chunking changed from off to 128 tokens, overlap 16: long texts are re-split" in out
    assert "passages of at most 128 tokens (overlap 16)" in out and "cut to its window" not in out
    assert main(["search", "--index", str(whole), "zeppelin", "--json", "-k", "3"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] != "c/long.txt"  # what chunking fixes
    assert main(["index", str(corpus), "--index", str(index), "--chunk-tokens", "300", "--no-progress"]) == 2
    assert "more than minilm reads: its window holds 254 tokens" in capsys.readouterr().err
    fresh = tmp_path / "fresh"
    assert main(["index", str(corpus), "--index", str(fresh), "--model", "minilm", "--chunk-overlap", "254"]) == 2
    assert "--chunk-overlap must be at least 0 and less than the passage size (254 tokens)" in capsys.readouterr().err
    assert not fresh.exists()  # refused before the index is created


def test_a_jsonl_line_with_a_lone_surrogate_is_that_lines_error(tmp_path, make_index):
    (tmp_path / "c.jsonl").write_text('{"id": "ok", "text": "plain text"}\n'
                                      '{"id": "caf\\udce9", "text": "a name from os.fsdecode"}\n')
    index = make_index()
    summary = index.index_corpus(tmp_path / "c.jsonl")
    assert summary.added == 1 and [e["line"] for e in summary.errors] == [2]
    assert summary.errors[0]["id"] == "caf\\xe9" and "lone surrogate" in summary.errors[0]["error"]
    assert index.ids() == ["ok"]


def test_a_text_split_differently_leaves_no_stale_passages(tmp_path, make_index):
    folder = tmp_path / "c"
    folder.mkdir()
    note = folder / "note.txt"
    (folder / "other.txt").write_text("an unrelated short note")
    words = lambda n: " ".join(f"w{i}" for i in range(n))  # noqa: E731
    index = make_index()  # the hash-test model has no window: passages only at the size given
    note.write_text(words(50))
    first = index.index_corpus(folder, chunk_tokens=20, chunk_overlap=0)
    assert first.added == 4 and sorted(index.ids()) == ["c/note.txt#chunk=1", "c/note.txt#chunk=2",
                                                        "c/note.txt#chunk=3", "c/other.txt"]
    note.write_text(words(30))  # two passages now: the third goes
    second = index.index_corpus(folder)  # the recorded settings
    assert (second.updated, second.unchanged, second.deleted) == (2, 1, 1)  # passage 2 is shorter
    assert sorted(index.ids()) == ["c/note.txt#chunk=1", "c/note.txt#chunk=2", "c/other.txt"]
    note.write_text(words(10))  # fits whole: the passages go
    third = index.index_corpus(folder)
    assert (third.added, third.deleted) == (1, 2) and sorted(index.ids()) == ["c/note.txt", "c/other.txt"]
    note.write_text(words(50))  # split again: the whole item goes
    fourth = index.index_corpus(folder)
    assert (fourth.added, fourth.deleted) == (3, 1)
    assert sorted(index.ids()) == ["c/note.txt#chunk=1", "c/note.txt#chunk=2", "c/note.txt#chunk=3",
                                  "c/other.txt"]
