"""Compact vector storage (umr.index.compact): int8 codes or sign bits in memory, float32 rows on
disk for rescoring; recall against float32 exact search on real minilm vectors, persistence,
masks, int8 clipping and re-calibration."""

from __future__ import annotations

import numpy as np
import pytest

import umr
from umr.index.compact import CompactVectors

SUBJECTS = ["the doctor", "a teacher", "my neighbour", "the fisherman", "an engineer", "the council", "a chef",
            "the students", "a journalist", "the farmer", "an astronaut", "the gardener"]
VERBS = ["repaired", "painted", "sold", "studied", "photographed", "designed", "lost", "found", "cleaned", "tested",
         "cooked", "translated"]
OBJECTS = ["the red bicycle", "an old violin", "the garden", "a satellite", "the manuscript", "a wooden boat",
           "the vaccine", "a tiny camera", "the cathedral", "a solar panel", "the secret recipe", "a frozen lake"]
PLACES = ["in Paris", "near the harbour", "at the market", "in the mountains", "after the storm", "on the train",
          "at midnight", "in the kitchen"]


@pytest.fixture(scope="module")
def minilm_corpus() -> tuple[np.ndarray, np.ndarray]:
    """3,000 minilm vectors of generated sentences, and 50 query vectors of other sentences."""
    rng = np.random.default_rng(0)
    texts: dict[str, None] = {}
    while len(texts) < 3050:
        texts.setdefault(f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                         f"{rng.choice(PLACES)}.")
    texts = list(texts)
    model = umr.load_model("minilm")
    return model.encode_candidates(texts[:3000], batch_size=128), model.encode_queries(texts[3000:])


def exact(queries: np.ndarray, rows: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = queries @ rows.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_top10_overlap_with_float32_is_at_least_095_on_minilm_vectors(kind, minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    store = CompactVectors.create(tmp_path / kind, kind, 384)
    for start in range(0, len(corpus), 1000):  # as an index's commits arrive
        store.add(corpus[start:start + 1000])
    truth = exact(queries, corpus, 10)
    scores, ids = store.search(queries, 10)
    assert overlap(ids, truth) >= 0.95
    assert np.allclose(scores, np.take_along_axis(queries @ corpus.T, ids, 1), atol=1e-5)  # exact rescores
    assert store.memory_bytes == 3000 * (384 if kind == "int8" else 48)
    if kind == "binary":  # without rescoring sign bits alone miss much of the top 10: rescoring is what works
        assert overlap(store.search(queries, 10, rescore_k=0)[1], truth) < 0.9


def test_a_saved_store_reopens_to_the_same_answers_and_drops_unrecorded_rows(minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    for kind in ("int8", "binary"):
        store = CompactVectors.create(tmp_path / kind, kind, 384)
        store.add(corpus[:1500])
        store.save()
        before = store.search(queries, 10)
        store.add(corpus[1500:1600])  # written to disk, never saved: a crash before the commit
        reopened = CompactVectors.open(tmp_path / kind)
        assert len(reopened) == 1500 and np.array_equal(reopened.search(queries, 10)[1], before[1])
        assert np.allclose(reopened.search(queries, 10)[0], before[0])
        reopened.add(corpus[1500:1510])
        assert np.array_equal(np.asarray(reopened.rows()[1500:]), corpus[1500:1510])
        with pytest.raises(FileExistsError):
            CompactVectors.create(tmp_path / kind, kind, 384)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_the_mask_lets_only_its_rows_through(kind, minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    store = CompactVectors.create(tmp_path, kind, 384)
    store.add(corpus[:2000])
    mask = np.zeros(2000, bool)
    mask[::3] = True
    scores, ids = store.search(queries, 10, mask=mask)
    assert mask[ids].all()
    assert overlap(ids, exact(queries, corpus[:2000], 10, mask)) >= 0.95
    few = np.zeros(2000, bool)
    few[[7, 900]] = True
    scores, ids = store.search(queries[:3], 5, mask=few)
    assert (np.sort(ids[:, :2], 1) == [7, 900]).all() and (ids[:, 2:] == -1).all() and np.isneginf(scores[:, 2:]).all()


def test_int8_values_beyond_the_calibration_are_clipped_counted_and_refitted(tmp_path):
    rng = np.random.default_rng(1)
    store = CompactVectors.create(tmp_path, "int8", 16)
    small = rng.uniform(-0.1, 0.1, (100, 16)).astype(np.float32)
    store.add(small)
    assert store.clipped == 0 and store.codec.rows == 100
    store.add(small[:50] * 0.5)  # inside the range: nothing clipped, nothing re-fitted
    assert store.clipped == 0 and store.codec.rows == 100
    wide = rng.uniform(-1, 1, (10, 16)).astype(np.float32)
    store.add(wide)  # clipped, but the rows have not doubled: kept, counted
    assert store.clipped > 0 and store.codec.rows == 100 and 0 < store.clipped_share < 1
    store.add(rng.uniform(-1, 1, (60, 16)).astype(np.float32))  # 220 rows >= 2 x 100: re-fitted on all
    assert store.codec.rows == 220 and store.clipped == 0
    rows = np.asarray(store.rows())
    assert np.allclose(store.codec.decode(store.codec.encode(rows).codes), rows, atol=store.codec.step.max())


def test_what_a_store_refuses(tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of int8, binary"):
        CompactVectors.create(tmp_path / "a", "int4", 8)
    assert not (tmp_path / "a").exists()
    store = CompactVectors.create(tmp_path / "b", "int8", 8)
    with pytest.raises(ValueError, match="4 dimensions, the store 8"):
        store.add(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        store.add(np.ones((1, 8), np.float32))
    assert len(store) == 0
    scores, ids = store.search(np.ones(8, np.float32), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()
