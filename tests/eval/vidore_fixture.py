"""A small ViDoRe-style task written in the layouts users download: Hugging Face parquet subsets
(``corpus/``, ``queries/``, ``qrels/``), a V1 question-answering table, and a BEIR JSONL folder.

Pages are real PDF pages rendered by umr's own PDF reader (:func:`umr.data.corpus.read_folder`:
a 3-page PDF of text, and ``tests/fixtures/pdf/owner-password-only.pdf``), shrunk so that tiny
models embed them fast, plus generated images. Query and corpus ids are small integers that
overlap (``"0"`` is both a query and a page), as in ViDoRe's own datasets.
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from umr.core.items import Item
from umr.data.corpus import read_folder

ROOT = Path(__file__).resolve().parents[2]
QUERIES = {0: "council report revenue by region", 1: "a river runs through the city",
           2: "quarterly table of figures", 3: "red and blue chart"}
#: query id -> {corpus id: graded relevance}
QRELS = {0: {0: 2, 3: 1}, 1: {1: 1}, 2: {2: 1, 5: 2}, 3: {4: 1, 6: 1}}
PAGE_SIZE = (84, 112)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def page_images(scratch: Path) -> list[bytes]:
    """PNG bytes of 7 pages: 4 rendered PDF pages, then 3 generated images."""
    spec = importlib.util.spec_from_file_location("build_samples", ROOT / "samples" / "build_samples.py")
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    pdfs = scratch / "pdfs"
    pdfs.mkdir(parents=True, exist_ok=True)
    (pdfs / "a-report.pdf").write_bytes(samples.pdf_with_text([["Council report", "Revenue by region."],
                                                               ["A river runs through the city."],
                                                               ["Quarterly table", "2023 2024"]]))
    (pdfs / "b-owner.pdf").write_bytes((ROOT / "tests/fixtures/pdf/owner-password-only.pdf").read_bytes())
    pages = []
    for entry in read_folder(pdfs):
        item: Item = entry.loader()
        pages.append(_png(item.image.resize(PAGE_SIZE)))
    assert len(pages) == 4, "expected 3 + 1 rendered PDF pages"
    rng = np.random.default_rng(7)
    pages.append(_png(Image.fromarray(rng.integers(0, 255, (112, 84, 3), dtype=np.uint8))))
    chart = np.zeros((100, 90, 3), np.uint8)
    chart[20:80, 10:40, 0] = 220
    chart[40:80, 50:80, 2] = 220
    pages.append(_png(Image.fromarray(chart)))
    pages.append(_png(Image.fromarray(rng.integers(0, 255, (60, 130), dtype=np.uint8), "L")))
    return pages


def write_parquet_task(folder: Path, pages: list[bytes], *, bad_rows: bool = False) -> Path:
    """The Hugging Face layout (ViDoRe V2 / ``*_beir``): ``<subset>/test-00000-of-00001.parquet``.
    ``bad_rows`` adds a page whose bytes are no image, a page without an id and a query without text."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = list(range(len(pages)))
    images = [{"bytes": page, "path": f"page{i}.png"} for i, page in enumerate(pages)]
    queries = [{"query-id": q, "query": text, "language": "english"} for q, text in QUERIES.items()]
    if bad_rows:
        ids += [len(pages), None]
        images += [{"bytes": b"this is not an image", "path": "broken.png"}, {"bytes": pages[0], "path": None}]
        queries.append({"query-id": 9, "query": None, "language": "english"})
    qrels = [{"query-id": q, "corpus-id": d, "score": s} for q, judged in QRELS.items() for d, s in judged.items()]
    if bad_rows:
        qrels.append({"query-id": 9, "corpus-id": 0, "score": 1})
    tables = {
        "corpus": pa.table({"corpus-id": pa.array(ids, pa.int64()), "image": pa.array(images),
                            "doc-id": ["doc"] * len(ids)}),
        "queries": pa.Table.from_pylist(queries),
        "qrels": pa.Table.from_pylist(qrels),
    }
    for subset, table in tables.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, folder / subset / "test-00000-of-00001.parquet")
    return folder


def write_jsonl_task(folder: Path, pages: list[bytes]) -> Path:
    """The same task as a BEIR JSONL folder whose corpus rows carry a page image path."""
    (folder / "pages").mkdir(parents=True, exist_ok=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for i, page in enumerate(pages):
            (folder / "pages" / f"page{i}.png").write_bytes(page)
            f.write(json.dumps({"_id": str(i), "image": f"pages/page{i}.png"}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for q, text in QUERIES.items():
            f.write(json.dumps({"_id": str(q), "text": text}) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, judged in QRELS.items()
                                              for d, s in judged.items()]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    return folder


def write_qa_task(folder: Path, pages: list[bytes]) -> Path:
    """ViDoRe V1's question-answering table: one row per page, ``query`` null for unasked pages,
    a page repeated for a second query, ``data/test-00000-of-00001.parquet``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"query": QUERIES[0], "image": {"bytes": pages[0], "path": None}, "image_filename": "p0.png"},
            {"query": QUERIES[1], "image": {"bytes": pages[1], "path": None}, "image_filename": "p1.png"},
            {"query": None, "image": {"bytes": pages[2], "path": None}, "image_filename": "p2.png"},
            {"query": QUERIES[3], "image": {"bytes": pages[5], "path": None}, "image_filename": "p5.png"},
            {"query": QUERIES[2], "image": {"bytes": pages[1], "path": None}, "image_filename": "p1.png"},
            {"query": QUERIES[0], "image": {"bytes": pages[3], "path": None}, "image_filename": "p3.png"}]
    (folder / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "data" / "test-00000-of-00001.parquet")
    return folder


if __name__ == "__main__":  # writes the bundled tests/fixtures/eval/vidore-mini (the docs' example)
    import sys
    import tempfile

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/eval/vidore-mini"
    with tempfile.TemporaryDirectory() as scratch:
        write_parquet_task(target, page_images(Path(scratch)))
    print(f"wrote {target}")
