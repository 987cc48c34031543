"""Item identity across sources, content fingerprints and absolute paths in the index (issues 8, 15)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

import hashing
from conftest import cli_store_args
from umr import Item
from umr.cli import main
from umr.index import Index


def _index(source, index, *extra, model="hash-test"):
    return main(["index", str(source), "--index", str(index), "--model", model, "--no-progress", *extra])


def _bmp(path, colour):
    Image.new("RGB", (8, 8), colour).save(path)  # BMP: the same byte size for every colour
    return path


def _overwrite_keeping_stat(path, colour):
    """Another picture in the same file, with the same size and modification time."""
    st = os.stat(path)
    _bmp(path, colour)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size


def test_two_folders_with_the_same_file_name_both_stay(tmp_path, capsys, backend, store_options):
    a, b = tmp_path / "A", tmp_path / "B"
    for folder, text in ((a, "red apples in autumn"), (b, "a violin concerto")):
        folder.mkdir()
        (folder / "notes.txt").write_text(text)
    (a / "extra.txt").write_text("winter harbour fog")
    index = tmp_path / "ix"
    options = store_options("v")
    where = cli_store_args(options) if backend != "faiss" else []
    assert _index(a, index, *where) == 0 and _index(b, index) == 0
    assert "added 1, updated 0, unchanged 0" in capsys.readouterr().out.splitlines()[-1]
    with Index.open(index) as ix:
        assert sorted(ix.ids()) == ["A/extra.txt", "A/notes.txt", "B/notes.txt"]
        assert ix.search("violin concerto", k=1)[0].id == "B/notes.txt"
        assert ix.search("red apples", k=1)[0].id == "A/notes.txt"
    for folder in (a, b):  # a re-run of either finds its items unchanged
        assert _index(folder, index) == 0
        assert ", unchanged " in capsys.readouterr().out
    assert _index(b, index) == 0
    assert "added 0, updated 0, unchanged 1, deleted 0" in capsys.readouterr().out
    # --prune removes only what is gone from the source being indexed
    (a / "extra.txt").unlink()
    assert _index(a, index, "--prune") == 0
    assert "unchanged 1, deleted 1" in capsys.readouterr().out
    assert _index(b, index, "--prune") == 0
    assert "unchanged 1, deleted 0" in capsys.readouterr().out
    if backend != "faiss":  # where the vectors live is fixed: another place is refused, the same accepted
        assert _index(b, index, "--uri", str(tmp_path / "other.db")) == 2
        assert "--uri" in capsys.readouterr().err
        assert _index(b, index, "--uri", options["uri"], "--collection", options.get("collection", "umr")) == 0
    with Index.open(index) as ix:
        assert sorted(ix.ids()) == ["A/notes.txt", "B/notes.txt"]


def test_folders_of_the_same_name_need_their_own_prefix(tmp_path, capsys):
    one, two = tmp_path / "x" / "docs", tmp_path / "y" / "docs"
    for folder in (one, two):
        folder.mkdir(parents=True)
        (folder / "a.txt").write_text(f"note from {folder.parent.name}")
    index = tmp_path / "ix"
    assert _index(one, index) == 0
    capsys.readouterr()
    assert _index(two, index) == 2
    err = capsys.readouterr().err
    assert "already start with 'docs/'" in err and "--id-prefix" in err and len(err.splitlines()) == 1
    assert _index(two, index, "--id-prefix", "docs-y") == 0
    assert _index(two, index) == 0  # the source keeps the prefix it was first indexed with
    assert "unchanged 1" in capsys.readouterr().out
    assert _index(two, index, "--id-prefix", "other") == 2
    assert "was indexed with --id-prefix 'docs-y'" in capsys.readouterr().err
    with Index.open(index) as ix:
        assert sorted(ix.ids()) == ["docs-y/a.txt", "docs/a.txt"]


def test_the_same_explicit_id_in_two_jsonl_files_is_a_reported_collision(tmp_path, capsys):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(json.dumps({"id": "p1", "text": "red apples"}) + "\n"
                     + json.dumps({"text": "no id here"}) + "\n")
    second.write_text(json.dumps({"id": "p1", "text": "blue violins"}) + "\n"
                      + json.dumps({"text": "no id either"}) + "\n")
    index = tmp_path / "ix"
    assert _index(first, index) == 0 and _index(second, index) == 0
    out = capsys.readouterr().out
    assert "added 1, updated 0, unchanged 0, deleted 0, skipped 0, errors 1" in out
    assert "p1: id collision: 'p1' is already indexed from " + str(first.resolve()) in out
    with Index.open(index) as ix:
        assert sorted(ix.ids()) == ["first.jsonl/line-2", "p1", "second.jsonl/line-2"]
        assert ix.get(["p1"])[0]["text"] == "red apples"
    # the same content under the same id is still another source's item, not "unchanged"
    second.write_text(json.dumps({"id": "p1", "text": "red apples"}) + "\n")
    assert _index(second, index) == 0
    assert "unchanged 0, deleted 0, skipped 0, errors 1" in capsys.readouterr().out


def test_an_image_overwritten_in_place_is_updated_in_jsonl(tmp_path, capsys):
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    pic = _bmp(folder / "img" / "pic.bmp", (255, 0, 0))
    items = folder / "items.jsonl"
    items.write_text(json.dumps({"id": "pic", "image": "img/pic.bmp"}) + "\n")
    index = tmp_path / "ix"
    assert _index(items, index, model="pixel-test") == 0
    _overwrite_keeping_stat(pic, (0, 0, 255))
    assert _index(items, index, model="pixel-test") == 0
    assert "added 0, updated 1, unchanged 0" in capsys.readouterr().out
    new = hashing.PixelHashEmbedder().encode_candidates([Item(image=str(pic))])
    with Index.open(index) as ix:
        top = ix.search_vectors(new, k=1)[0][0]
    assert top.id == "pic" and top.score == pytest.approx(1.0, abs=1e-6)


def test_an_image_overwritten_in_place_is_updated_by_index_add(tmp_path):
    pic = _bmp(tmp_path / "pic.bmp", (255, 0, 0))
    model = hashing.PixelHashEmbedder()
    with Index.create(tmp_path / "ix", model) as ix:
        assert ix.add([Item(image=str(pic), id="pic"), Item(text="a note", id="n")]).added == 2
        assert ix.add([Item(image=str(pic), id="pic")]).unchanged == 1
        _overwrite_keeping_stat(pic, (0, 0, 255))
        summary = ix.add([Item(image=str(pic), id="pic")])
        assert (summary.updated, summary.unchanged) == (1, 0)
        top = ix.search_vectors(model.encode_candidates([Item(image=str(pic))]), k=1)[0][0]
        assert top.id == "pic" and top.score == pytest.approx(1.0, abs=1e-6)
        assert ix.get(["pic"])[0]["path"] == str(pic.resolve())
        # in-memory images: their pixels decide
        red = Image.new("RGB", (6, 6), "red")
        assert ix.add([Item(image=red, id="mem")]).added == 1
        assert ix.add([Item(image=red.copy(), id="mem")]).unchanged == 1
        assert ix.add([Item(image=Image.new("RGB", (6, 6), "green"), id="mem")]).updated == 1


def test_jsonl_paths_are_absolute_and_a_rerun_from_elsewhere_is_unchanged(tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    (work / "data" / "img").mkdir(parents=True)
    _bmp(work / "data" / "img" / "pic.bmp", (0, 200, 0))
    (work / "data" / "items.jsonl").write_text(json.dumps({"id": "pic", "image": "img/pic.bmp",
                                                           "text": "a green square"}) + "\n")
    index = tmp_path / "ix"
    monkeypatch.chdir(work)
    assert _index("data/items.jsonl", index, model="pixel-test") == 0
    monkeypatch.chdir(work / "data" / "img")
    assert _index("../items.jsonl", index, model="pixel-test") == 0
    assert "added 0, updated 0, unchanged 1" in capsys.readouterr().out
    with Index.open(index) as ix:
        path = ix.get(["pic"])[0]["path"]
    assert path == str((work / "data" / "img" / "pic.bmp").resolve()) and os.path.isabs(path)


def test_mbeir_pool_paths_are_absolute(tmp_path, capsys, monkeypatch):
    root = tmp_path / "mbeir"
    (root / "mbeir_images" / "x").mkdir(parents=True)
    _bmp(root / "mbeir_images" / "x" / "1.bmp", (9, 9, 9))
    pool = root / "cand_pool" / "pool.jsonl"
    pool.parent.mkdir()
    pool.write_text(json.dumps({"did": "1:1", "txt": None, "img_path": "mbeir_images/x/1.bmp",
                                "modality": "image"}) + "\n")
    monkeypatch.chdir(root)
    assert _index("cand_pool/pool.jsonl", tmp_path / "ix", model="pixel-test") == 0
    monkeypatch.chdir(tmp_path)
    assert _index("mbeir/cand_pool/pool.jsonl", tmp_path / "ix", model="pixel-test") == 0
    assert "unchanged 1" in capsys.readouterr().out
    with Index.open(tmp_path / "ix") as ix:
        assert ix.get(["1:1"])[0]["path"] == str((root / "mbeir_images" / "x" / "1.bmp").resolve())


def test_options_on_an_existing_index(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello there")
    index = tmp_path / "ix"
    assert _index(corpus, index, "--ocr", "off") == 0
    capsys.readouterr()
    assert _index(corpus, index, "--ocr", "on") == 2
    err = capsys.readouterr().err
    assert "--ocr on (it was built with OCR off" in err and len(err.strip().splitlines()) == 1
    assert _index(corpus, index, "--max-image-tokens", "64") == 2
    assert "--max-image-tokens 64 (built with the default)" in capsys.readouterr().err
    assert _index(corpus, index, "--uri", str(tmp_path / "x.db"), "--collection", "c") == 2
    err = capsys.readouterr().err
    assert "--uri (a faiss index" in err and "--collection (a faiss index" in err
    assert _index(corpus, index, "--method", "hnsw") == 0
    out = capsys.readouterr().out
    assert "search method switched from exact to hnsw" in out and "unchanged 1" in out
    with Index.open(index) as ix:
        assert ix.config["method"] == "hnsw" and ix.config["ocr"] is False
    assert _index(corpus, index, "--method", "hnsw", "--ocr", "off") == 0  # agreeing options are fine
    assert "switched" not in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["", ], "the query is empty"),
    (["   \t"], "the query is empty"),
    (["cats", "-k", "0"], "k must be a positive"),
    (["cats", "-k", "-3"], "k must be a positive"),
    (["cats", "--ef-search", "0"], "ef_search must be a positive"),
    (["caf\udce9"], "not valid UTF-8"),
    (["cats", "--device", "cuda"], "no CUDA device"),
])
def test_search_edges_are_one_line_errors(tmp_path, capsys, argv, message):
    import torch

    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("cats and dogs")
    assert _index(corpus, tmp_path / "ix") == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "ix"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_index_search_refuses_bad_queries(tmp_path):
    import torch

    with Index.create(tmp_path / "ix", hashing.HashEmbedder()) as ix:
        ix.add([Item(text="cats and dogs", id="a")])
        for kwargs in ({"text": ""}, {"text": "  "}, {"text": "cats", "k": 0}, {"text": "cats", "k": -3},
                       {"text": "cats", "ef_search": 0}, {"text": "caf\udce9"}, {}):
            with pytest.raises(ValueError):
                ix.search(**kwargs)
        with pytest.raises(ValueError, match="k must"):
            ix.search_vectors(np.ones((1, 64), np.float32), k=0)
        assert ix.search("cats", k=1)[0].id == "a"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Index.open(tmp_path / "ix", device="cuda")


def test_a_rerun_over_unchanged_files_reads_none_of_them(tmp_path, monkeypatch, capsys):
    import umr.core.fingerprint as fpm

    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(5):
        (corpus / f"{i}.txt").write_text(f"note number {i}")
    _bmp(corpus / "pic.bmp", (1, 2, 3))
    (corpus / "pic.txt").write_text("a caption")
    assert _index(corpus, tmp_path / "ix", model="pixel-test") == 0
    reads = []
    real = fpm._hash_file
    monkeypatch.setattr(fpm, "_hash_file", lambda p: reads.append(p) or real(p))
    assert _index(corpus, tmp_path / "ix", model="pixel-test") == 0
    assert "unchanged 6" in capsys.readouterr().out and reads == []
    (corpus / "3.txt").write_text("note number 3, edited")
    assert _index(corpus, tmp_path / "ix", model="pixel-test") == 0
    assert "updated 1, unchanged 5" in capsys.readouterr().out and len(reads) == 1


def test_two_jsonl_files_of_one_name_without_ids_both_stay(tmp_path, capsys):
    """Lines without an id are ``<file name>/line-N``; a second source of that file name gets
    its folder in front, decided once, so neither source's ids ever change."""
    for name in ("k1", "k2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "items.jsonl").write_text(json.dumps({"text": f"hello from {name}"}) + "\n")
    index = tmp_path / "ix"
    for name in ("k1", "k2", "k1", "k2"):
        assert _index(tmp_path / name / "items.jsonl", index) == 0
    out = capsys.readouterr().out
    assert "errors 0" in out.splitlines()[-1] and out.count("unchanged 1") == 2
    with Index.open(index) as opened:
        assert sorted(opened.ids()) == ["items.jsonl/line-1", "k2/items.jsonl/line-1"]
