"""The README quick start: the shipped sample corpus under minilm (a real text model) with OCR."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from umr.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"

EXPECTED_TOP = {
    "receipt for croissants and coffee": "corpus/scans/bakery-receipt.png",          # OCR of a scan
    "when does the train to the airport leave": "corpus/scans/train-timetable.png",  # OCR of a scan
    "how to feed birds when the ground is frozen": "corpus/docs/garden-birds.pdf#page=2",  # PDF text layer
    "the committee decided to buy a water pump": "corpus/docs/allotment-minutes-scan.pdf#page=1",  # image-only PDF, OCR
    "living simply in a cabin in the woods": "corpus/notes/walden-woods.txt",
    "a naval officer who was a computer pioneer": "corpus/photos/grace-hopper.jpg",  # photo + caption
}


@pytest.fixture(scope="module")
def quickstart_index(tmp_path_factory):
    pytest.importorskip("rapidocr_onnxruntime")
    index = tmp_path_factory.mktemp("qs") / "index"
    assert main(["index", str(SAMPLES), "--index", str(index), "--model", "minilm", "--no-progress"]) == 0
    return index


def test_quickstart_summary(quickstart_index):
    with open(quickstart_index / "errors.jsonl") as handle:
        problems = [json.loads(line) for line in handle]
    # the one photo without caption or words has no representation under a text model, and says so
    assert [(p["id"], p["kind"]) for p in problems] == [("corpus/photos/dahlia.jpg", "no representation")]
    assert "cannot see pixels" in problems[0]["error"]
    from umr.index import Index

    with Index.open(quickstart_index) as index:
        assert len(index) == 16
        records = {r["id"]: r for r in index.get(index.ids())}
    assert records["corpus/scans/bakery-receipt.png"]["via"] == "ocr"
    assert records["corpus/scans/bakery-receipt.png"]["modality"] == "image"
    assert records["corpus/docs/garden-birds.pdf#page=1"]["via"] == "text layer"
    assert records["corpus/photos/grace-hopper.jpg"]["modality"] == "image,text"


@pytest.mark.parametrize("query", sorted(EXPECTED_TOP))
def test_quickstart_searches(quickstart_index, query, capsys):
    assert main(["search", "--index", str(quickstart_index), query, "-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results[0]["id"] == EXPECTED_TOP[query]
