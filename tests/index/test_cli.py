"""``umr index`` / ``umr search`` end to end (in-process ``umr.cli.main``, the hash-test model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from umr.cli import main

_spec = importlib.util.spec_from_file_location(
    "corpus_helpers", Path(__file__).resolve().parents[1] / "data" / "test_corpus.py")
corpus_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(corpus_helpers)


def test_bad_files_are_reported_and_the_rest_indexed(tmp_path, capsys, monkeypatch):
    corpus = corpus_helpers.make_bad_corpus(tmp_path / "c")
    index = tmp_path / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "hash-test", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "added 3, updated 0, unchanged 0, deleted 0, skipped 1, errors 7" in out, out
    assert "red.png" in out and "no usable representation under hash-test" in out
    assert "ignored 2 file(s) umr does not read: 1 .bin, 1 hidden" in out, out
    errors = [json.loads(line) for line in (index / "errors.jsonl").read_text().splitlines()]
    by_id = {e["id"]: e for e in errors if e["kind"] != "ignored"}
    assert set(by_id) == {"c/corrupt.jpg", "c/truncated.jpg", "c/bomb.png", "c/binary.txt", "c/empty.txt",
                          "c/huge.txt", "c/broken.pdf", "c/red.png"}  # ids: the folder's name / path
    assert {e["id"] for e in errors if e["kind"] == "ignored"} == {"c/ignored.bin", "c/.hidden.txt"}
    assert by_id["c/red.png"]["kind"] == "no representation"
    assert "decompression bomb" in by_id["c/bomb.png"]["error"]
    assert "cannot be decoded" in by_id["c/truncated.jpg"]["error"]

    assert main(["search", "--index", str(index), "plain green square", "--json", "-k", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["id"] == "c/green.jpg" and results[0]["modality"] == "image,text"
    assert results[0]["rank"] == 1 and results[0]["via"].startswith("caption")
    assert main(["search", "--index", str(index), "lighthouse", "--modality", "text", "-k", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:1] == ["1"] and "good.txt" in lines[0] and "[text]" in lines[0]
    assert all("[text]" in line for line in lines)
    assert main(["search", "--index", str(index), "tide", "--where", "ext=md", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == ["c/notes.md"]

    # a second run: nothing new; bad files are reported again, and OCR does not run again on the
    # photo that had no words (its fingerprint is remembered)
    import umr.ocr

    real_read_text, ocr_calls = umr.ocr.read_text, []

    def counting_read_text(image, *, item_id=None, **kwargs):
        ocr_calls.append(item_id)
        return real_read_text(image, item_id=item_id, **kwargs)

    monkeypatch.setattr(umr.ocr, "read_text", counting_read_text)
    assert main(["index", str(corpus), "--index", str(index), "--no-progress"]) == 0
    assert "added 0, updated 0, unchanged 3, deleted 0, skipped 1, errors 7" in capsys.readouterr().out
    assert ocr_calls == ["c/truncated.jpg"]  # errors are retried; the wordless photo is not re-read
    # an indexed file that turns bad loses its old version
    (corpus / "good.txt").write_bytes(b"\x00\x01binary now")
    assert main(["index", str(corpus), "--index", str(index), "--no-progress"]) == 0
    assert "added 0, updated 0, unchanged 2, deleted 1, skipped 1, errors 8" in capsys.readouterr().out


def test_wrong_model_is_refused_with_one_line(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello there")
    index = tmp_path / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "hash-test", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(index), "hello", "--model", "minilm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "built with hash-test" in err and "not minilm" in err and "dimension: 64 vs 384" in err
    assert main(["index", str(corpus), "--index", str(index), "--model", "minilm", "--no-progress"]) == 2
    assert "built with hash-test" in capsys.readouterr().err
    assert main(["search", "--index", str(tmp_path / "nope"), "hello"]) == 2
    assert "is not a umr index" in capsys.readouterr().err


def test_milvus_backend_through_the_cli(tmp_path, capsys):
    pytest.importorskip("milvus_lite")
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i, text in enumerate(["red apples in autumn", "a violin concerto", "winter harbour fog"]):
        (corpus / f"{i}.txt").write_text(text)
    index = tmp_path / "ix"
    args = ["index", str(corpus), "--index", str(index), "--model", "hash-test", "--no-progress",
            "--backend", "milvus", "--uri", str(tmp_path / "v.db")]
    assert main(args) == 0
    assert "added 3" in capsys.readouterr().out
    assert main(["search", "--index", str(index), "violin concerto", "--json", "-k", "2"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["id"] == "c/1.txt" and results[0]["text"] == "a violin concerto"


def test_a_model_that_sees_pixels_embeds_every_image(tmp_path, capsys):
    """Under an image-capable model (as gme-2b) no OCR runs and photos without words are indexed."""
    corpus = corpus_helpers.make_bad_corpus(tmp_path / "c")
    index = tmp_path / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "pixel-test", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "added 4, updated 0, unchanged 0, deleted 0, skipped 0, errors 7" in out, out
    from umr.index import Index

    with Index.open(index) as ix:
        assert ix.config["sees_images"] is True and ix.config["ocr"] is False
        records = {r["id"]: r for r in ix.get(["c/red.png", "c/green.jpg"])}
    assert records["c/red.png"]["via"] == "pixels" and records["c/red.png"]["modality"] == "image"
    assert records["c/green.jpg"]["via"] == "pixels+text" and records["c/green.jpg"]["modality"] == "image,text"
    assert main(["search", "--index", str(index), "--image", str(corpus / "red.png"), "--json", "-k", "1"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "c/red.png"
