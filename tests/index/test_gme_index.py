"""The index with a real MLLM code path (tiny random GME): pixels are embedded, no OCR runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from umr.cli import main
from umr.index import Index

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "corpus"


def test_sample_corpus_under_tiny_gme_embeds_every_image(tiny_gme_dir, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(SAMPLES, corpus)
    index = tmp_path / "ix"
    args = ["index", str(corpus), "--index", str(index), "--model", str(tiny_gme_dir),
            "--max-image-tokens", "16", "--min-image-tokens", "4", "--no-progress"]
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "skipped 0, errors 0" in summary, summary
    with Index.open(index) as ix:
        assert ix.config["sees_images"] is True and ix.config["ocr"] is False
        records = {r["id"]: r for r in ix.get(ix.ids())}
    photo = records["corpus/photos/dahlia.jpg"]
    assert photo["modality"] == "image" and photo["via"] == "pixels"
    assert records["corpus/photos/grace-hopper.jpg"]["modality"] == "image,text"
    assert all(r["via"] != "ocr" for r in records.values())

    # an image query without an instruction is the candidate's own prompt: it finds itself first
    assert main(["search", "--index", str(index), "--image", str(corpus / "photos" / "dahlia.jpg"),
                 "--json", "-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]
    assert top["id"] == "corpus/photos/dahlia.jpg" and top["score"] == pytest.approx(1.0, abs=1e-5)

    assert main(args) == 0  # a second run embeds nothing again
    assert "added 0, updated 0, unchanged" in capsys.readouterr().out
