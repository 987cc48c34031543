"""Corpus readers: folder rules (sidecars, PDF pages with text layers), bad files, JSONL, M-BEIR pools."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

from PIL import Image

from umr.data.corpus import count_corpus, read_corpus
from umr.core.items import ItemError

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A tiny PNG whose header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def make_bad_corpus(root: Path) -> Path:
    """Good files plus every kind of bad file the issue lists."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "good.txt").write_text("A short note about the harbour lighthouse.")
    (root / "notes.md").write_text("# Tides\nThe tide turns twice a day.")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "red.png")
    Image.new("RGB", (40, 30), (10, 200, 10)).save(root / "green.jpg")
    (root / "green.txt").write_text("A plain green square.")  # sidecar: fused with green.jpg
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    Image.effect_noise((64, 64), 50).convert("RGB").save(root / "truncated.jpg")
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    bomb_png(root / "bomb.png")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (root / "empty.txt").write_bytes(b"")
    with open(root / "huge.txt", "wb") as handle:  # sparse: over the size bound without writing it
        handle.truncate(60_000_000)
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    (root / ".hidden.txt").write_text("hidden files are not indexed")
    return root


def _load_all(source):
    good, bad = {}, {}
    for entry in read_corpus(source):
        if isinstance(entry, ItemError):
            bad[entry.item_id] = entry.reason
            continue
        try:
            good[entry.id] = (entry, entry.load())
        except ItemError as exc:
            bad[entry.id] = exc.reason
    return good, bad


def test_folder_reader_rules_and_bad_files(tmp_path):
    good, bad = _load_all(make_bad_corpus(tmp_path / "c"))
    # truncated.jpg has a valid header, so only decoding (by the model or OCR) rejects it
    assert set(good) == {"good.txt", "notes.md", "red.png", "green.jpg", "truncated.jpg"}
    assert "cannot be read" in bad["corrupt.jpg"]
    assert good["green.jpg"][1].text == "A plain green square."
    assert good["green.jpg"][1].modality.value == "image,text"
    assert good["red.png"][1].modality.value == "image"
    assert "decompression bomb" in bad["bomb.png"]
    assert "binary" in bad["binary.txt"]
    assert "empty" in bad["empty.txt"]
    assert "too large" in bad["huge.txt"]
    assert "broken PDF" in bad["broken.pdf"]
    assert "green.txt" not in good and "green.txt" not in bad
    assert count_corpus(tmp_path / "c") == 11


def test_fingerprints_change_with_content(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "a.txt").write_text("one")
    Image.new("RGB", (8, 8)).save(root / "p.png")
    (root / "p.txt").write_text("caption")
    first = {e.id: e.fingerprint for e in read_corpus(root)}
    assert {e.id: e.fingerprint for e in read_corpus(root)} == first
    (root / "p.txt").write_text("another caption")
    second = {e.id: e.fingerprint for e in read_corpus(root)}
    assert second["a.txt"] == first["a.txt"] and second["p.png"] != first["p.png"]


def test_pdf_pages_carry_image_and_text_layer():
    good, bad = _load_all(SAMPLES / "docs")
    assert not bad
    page = good["garden-birds.pdf#page=2"][1]
    assert isinstance(page.image, Image.Image) and max(page.image.size) == 1280
    assert page.text.startswith("Feeding birds in winter")
    assert good["garden-birds.pdf#page=2"][0].meta["page"] == 2
    scan = good["allotment-minutes-scan.pdf#page=1"][1]  # an image-only PDF: no text layer
    assert scan.text is None and scan.image is not None


def test_items_jsonl_with_metadata(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    lines = [{"id": "a", "text": "hello", "shop": "north", "price": 3},
             {"id": "b", "image": "x.png", "text": "a black square"},
             {"text": "no id given"},
             {"id": "bad", "text": 5}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    good, bad = _load_all(tmp_path / "c.jsonl")
    assert set(good) == {"a", "b", "line-3"}
    assert good["a"][0].meta == {"shop": "north", "price": 3}
    assert good["b"][1].image == str(tmp_path / "x.png")
    assert "bad" in bad and None in bad


def test_mbeir_pool(tmp_path):
    root = tmp_path / "M-BEIR"
    (root / "mbeir_images" / "x").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "mbeir_images" / "x" / "1.jpg")
    (root / "cand_pool").mkdir()
    pool = [{"did": "9:1", "txt": "", "img_path": "mbeir_images/x/1.jpg", "modality": "image", "src_content": None},
            {"did": "9:2", "txt": "a caption", "img_path": None, "modality": "text"},
            {"did": "9:3", "txt": "both", "img_path": "mbeir_images/x/1.jpg", "modality": "image,text"},
            {"did": "9:4", "txt": "", "img_path": None, "modality": "text"}]
    (root / "cand_pool" / "pool.jsonl").write_text("\n".join(json.dumps(x) for x in pool) + "\n")
    good, bad = _load_all(root / "cand_pool" / "pool.jsonl")
    assert good["9:1"][1].modality.value == "image" and good["9:1"][1].text is None
    assert good["9:1"][1].image == str(root / "mbeir_images" / "x" / "1.jpg")
    assert good["9:2"][1].modality.value == "text"
    assert good["9:3"][1].modality.value == "image,text"
    assert good["9:3"][0].meta == {"modality": "image,text"}
    assert "neither" in bad["9:4"]
