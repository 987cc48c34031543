"""A bad record in what is indexed is that item's error, and the rest is indexed: an M-BEIR pool
with an empty candidate, fields of the wrong type, an unknown modality, no ``did``, a line that is
not JSON, a missing and a truncated image file (`umr index` stopped with a TypeError traceback at
the first number where text belongs); ``Index.add`` of an empty item among good ones (it raised)."""

from __future__ import annotations

import json

from PIL import Image

import hashing  # noqa: F401 - registers the test models
from umr import Item
from umr.cli import main
from umr.index import Index


def _pool(root):
    (root / "mbeir_images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 20, 20)).save(root / "mbeir_images" / "red.png")
    Image.new("RGB", (8, 8), (20, 20, 200)).save(root / "mbeir_images" / "cut.png")
    cut = root / "mbeir_images" / "cut.png"
    cut.write_bytes(cut.read_bytes()[:50])
    lines = [
        {"did": "1:1", "txt": "herons wade in the shallow lake", "img_path": None, "modality": "text"},
        {"did": "1:2", "txt": "", "img_path": None, "modality": "text"},
        {"did": "1:3", "txt": 1234, "img_path": None, "modality": "text"},
        {"did": "1:4", "txt": "a caption", "img_path": 5, "modality": "image,text"},
        {"did": "1:5", "txt": "a red square", "img_path": "mbeir_images/red.png", "modality": "image,text"},
        {"did": "1:6", "txt": "x", "img_path": None, "modality": "video"},
        {"did": "1:7", "txt": None, "img_path": "mbeir_images/nowhere.png", "modality": "image"},
        {"did": "1:8", "txt": None, "img_path": "mbeir_images/cut.png", "modality": "image"},
        {"txt": "a record without a did", "modality": "text"},
        {"did": ["1:10"], "txt": "a did that is a list", "modality": "text"},
        {"did": "1:11", "txt": "otters float on their backs", "img_path": None, "modality": "text"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"did": "1:12", "txt": "torn li\n'
    (root / "pool.jsonl").write_text(text)
    return root / "pool.jsonl"


def test_umr_index_of_an_mbeir_pool_with_bad_records_indexes_the_rest(tmp_path, capsys):
    pool = _pool(tmp_path / "mbeir")
    code = main(["index", str(pool), "--index", str(tmp_path / "ix"), "--model", "pixel-test", "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "added 3," in out.out and "errors 9" in out.out
    errors = {(e["id"], e["line"]): e["error"] for e in map(json.loads, (tmp_path / "ix" / "errors.jsonl")
                                                              .read_text().splitlines())}
    assert errors[("1:2", 2)].startswith("has neither text nor image")
    assert errors[("1:3", 3)] == "field 'txt' must be a string or null, got int"
    assert errors[("1:4", 4)] == "field 'img_path' must be a string or null, got int"
    assert errors[("1:6", 6)].startswith("field 'modality': unknown modality 'video'")
    assert "not found" in errors[("1:7", None)] or "no such" in errors[("1:7", None)].lower()
    assert "cannot be decoded" in errors[("1:8", None)] or "truncated" in errors[("1:8", None)]
    assert errors[(None, 9)] == "has no 'did' (its id)"
    assert errors[(None, 10)] == "field 'did' (its id) must be a string or a number, got list"
    assert errors[(None, 12)].startswith("invalid JSON")
    with Index.open(tmp_path / "ix") as index:
        assert sorted(index.ids()) == ["1:1", "1:11", "1:5"]
        assert index.search("otters float", k=1)[0].id == "1:11"


def test_index_add_reports_an_empty_item_and_adds_the_others(tmp_path):
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder())
    with index:
        summary = index.add([Item.candidate(text="herons wade", id="a"), Item.candidate(text="   ", id="blank"),
                             Item.candidate(text="otters float", id="b")])
        assert summary.added == 2 and sorted(index.ids()) == ["a", "b"]
        assert summary.errors == [{"id": "blank", "path": None, "line": None, "kind": "error",
                                   "error": "has neither text nor image (an empty or blank text is no text)"}]
        failed = index.add([Item.failed("bad", "field 'text' must be a string or null, got int")])
        assert [e["error"] for e in failed.errors] == ["field 'text' must be a string or null, got int"]
