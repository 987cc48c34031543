"""Compact vector storage (umr.index.compact): int8 codes or sign bits in memory, float32 rows on
disk for rescoring; recall against float32 exact search on real minilm vectors, persistence by a
record (what the index manifest holds), masks, int8 clipping and re-calibration, compaction's
rewrite. The store wiring is tested in test_quantized_index.py."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

import umr
from sentences import sentences
from umr.core.quantize import sign_bits
from umr.index.compact import CompactVectors, check_quantize, new_record


@pytest.fixture(scope="module")
def minilm_corpus() -> tuple[np.ndarray, np.ndarray]:
    """3,000 minilm vectors of generated sentences, and 50 query vectors of other sentences."""
    texts = sentences(3050)
    model = umr.load_model("minilm")
    return model.encode_candidates(texts[:3000], batch_size=128), model.encode_queries(texts[3000:])


def exact(queries: np.ndarray, rows: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = queries @ rows.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def fill(folder, kind: str, batches, dim: int | None = None) -> CompactVectors:
    """Compact vectors that took each batch as a commit would: appended, then taken in."""
    folder.mkdir(parents=True, exist_ok=True)
    store = CompactVectors(folder, dim or batches[0].shape[1], new_record(kind), 0)
    for number, batch in enumerate(batches, start=1):
        store.take(store.append(batch, number))
    return store


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_top10_overlap_with_float32_is_at_least_095_on_minilm_vectors(kind, minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    store = fill(tmp_path, kind, [corpus[s:s + 1000] for s in range(0, len(corpus), 1000)])
    truth = exact(queries, corpus, 10)
    scores, ids = store.search(queries, 10)
    assert overlap(ids, truth) >= 0.95
    assert np.allclose(scores, np.take_along_axis(queries @ corpus.T, ids, 1), atol=1e-5)  # exact rescores
    assert store.memory_bytes == 3000 * (384 if kind == "int8" else 64)  # 48 bytes of sign bits held as 64
    if kind == "binary":  # without rescoring sign bits alone miss much of the top 10: rescoring is what works
        assert overlap(store.search(queries, 10, rescore_k=0)[1], truth) < 0.9


def test_a_recorded_store_reopens_to_the_same_answers_and_overwrites_unrecorded_rows(minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    for kind in ("int8", "binary"):
        store = fill(tmp_path / kind, kind, [corpus[:1500]])
        record = store.record
        before = store.search(queries, 10)
        store.append(corpus[1500:1600], 2)  # written to disk, never recorded: a crash before the commit
        reopened = CompactVectors(tmp_path / kind, 384, record, 1500)
        assert np.array_equal(reopened.search(queries, 10)[1], before[1])
        assert np.allclose(reopened.search(queries, 10)[0], before[0])
        reopened.take(reopened.append(corpus[1500:1510], 3))
        assert len(reopened.floats()) == 1510 and np.array_equal(np.asarray(reopened.floats()[1500:]),
                                                                 corpus[1500:1510])
        assert (tmp_path / kind / record["floats"]).stat().st_size == 1510 * 384 * 4  # the crash's rows are gone


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_the_mask_lets_only_its_rows_through(kind, minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    store = fill(tmp_path, kind, [corpus[:2000]])
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
    small = rng.uniform(-0.1, 0.1, (100, 16)).astype(np.float32)
    store = fill(tmp_path, "int8", [small])
    first_codes = store.record["codes"]
    assert store.record["clipped"] == 0 and store.codec.rows == 100
    store.take(store.append(small[:50] * 0.5, 2))  # inside the range: nothing clipped, nothing re-fitted
    assert store.record["clipped"] == 0 and store.codec.rows == 100
    store.take(store.append(rng.uniform(-1, 1, (10, 16)).astype(np.float32), 3))  # clipped, rows not doubled
    assert store.record["clipped"] > 0 and store.codec.rows == 100 and store.record["codes"] == first_codes
    written = store.append(rng.uniform(-1, 1, (60, 16)).astype(np.float32), 4)  # 220 >= 2 x 100: re-fitted
    assert written.refit and written.record["codes"] == "codes-000004.u8" and written.record["clipped"] == 0
    store.take(written)
    assert store.codec.rows == 220 and len(store.codes()) == 220
    rows = np.asarray(store.floats())
    assert np.array_equal(store.codes(), np.fromfile(tmp_path / "codes-000004.u8", np.uint8).reshape(220, 16))
    assert np.allclose(store.codec.decode(store.codec.encode(rows).codes), rows, atol=store.codec.step.max())


def test_a_single_first_row_calibrates_to_itself_and_the_next_commit_refits(tmp_path):
    store = fill(tmp_path, "int8", [np.full((1, 8), 0.5, np.float32)])
    assert store.codec.rows == 1 and len(store.codes()) == 1
    written = store.append(np.linspace(-1, 1, 16, dtype=np.float32).reshape(2, 8), 2)
    assert written.refit and written.record["codec"]["rows"] == 3


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_a_rewrite_keeps_only_the_rows_asked_for_and_refits(kind, minilm_corpus, tmp_path):
    corpus, queries = minilm_corpus
    store = fill(tmp_path, kind, [corpus[:200], corpus[200:1000]])
    keep = np.arange(0, 1000, 2)
    written = store.rewrite(keep, 9)
    assert written.record["floats"] == "vectors-000009.f32" and written.rows == 500
    rewritten = CompactVectors(tmp_path, 384, written.record, 500)
    assert np.array_equal(np.asarray(rewritten.floats()), corpus[:1000][keep])
    if kind == "int8":
        assert written.record["codec"]["rows"] == 500 and written.record["clipped"] == 0
    _, ids = rewritten.search(queries, 10)
    assert overlap(keep[ids], exact(queries, corpus[:1000][keep], 10) * 2) >= 0.95


def test_sign_bits_are_padded_in_memory_only_and_search_as_the_stored_codes(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1200, 384)).astype(np.float32)
    queries = x[:30] + 0.3 * rng.standard_normal((30, 384)).astype(np.float32)
    store = fill(tmp_path, "binary", [x[:700], x[700:1000]])
    assert np.array_equal(store.codes(), on_disk_all(store).reshape(1000, 48))
    store.first_stage_index()  # read in: 64 bytes a row in memory, the same 48 stored bytes out
    assert store.index.code_size == 64 and store.memory_bytes == 1000 * 64 and store.code_size == 48
    assert np.array_equal(store.codes(), on_disk_all(store).reshape(1000, 48))
    graph = store.grow_graph(None, m=16, ef_construction=64, target=tmp_path / "graph-a.faiss")
    store.keep_graph(graph)
    written = faiss.read_index_binary(str(tmp_path / "graph-a.faiss"))  # the graph's file: the stored width
    assert written.d == 384 and np.array_equal(faiss.vector_to_array(faiss.downcast_IndexBinary(written.storage).xb),
                                               on_disk_all(store))
    assert graph.index.code_size == 64 and graph.index.storage.ntotal == 1000

    store.take(store.append(x[1000:], 3))  # a commit after reading: its codes padded as they join
    assert store.index.ntotal == 1200 and not faiss.rev_swig_ptr(store.index.xb.data(), 1200 * 64)[48::64].any()
    bits = faiss.IndexBinaryFlat(384)  # faiss over the stored codes, unpadded
    bits.add(store.codes())
    want_dist, want_ids = bits.search(sign_bits(queries), 100)
    scores, ids = store.search(queries, 100, rescore_k=0)
    assert np.array_equal(ids, want_ids) and np.array_equal(scores, 384 - 2 * want_dist.astype(np.float32))
    by_graph = store.search(queries, 10, rescore_k=0, graph=graph, ef_search=400)  # the graph and its exact tail
    assert overlap(by_graph[1], want_ids[:, :10]) >= 0.9

    reopened = CompactVectors(tmp_path, 384, store.record, 1200)
    again = reopened.graph("graph-a.faiss", 1000)
    assert again.index.code_size == 64 and again.index.storage.ntotal == 1200
    got = reopened.search(queries, 10, rescore_k=0, graph=again, ef_search=400)
    assert np.array_equal(got[1], by_graph[1]) and np.array_equal(got[0], by_graph[0])
    grown = reopened.grow_graph({"file": "graph-a.faiss", "rows": 1000}, m=16, ef_construction=64,
                                target=tmp_path / "graph-b.faiss")
    assert grown.index.ntotal == 1200 and faiss.read_index_binary(str(tmp_path / "graph-b.faiss")).d == 384
    reopened.keep_graph(grown)
    assert overlap(reopened.search(queries, 10, rescore_k=0, graph=grown, ef_search=400)[1], want_ids[:, :10]) >= 0.9


def on_disk_all(store: CompactVectors) -> np.ndarray:
    return np.fromfile(store.folder / store.record["codes"], np.uint8)


def test_what_a_store_refuses(tmp_path):
    with pytest.raises(ValueError, match="quantize must be one of int8, binary"):
        check_quantize("int4")
    store = CompactVectors(tmp_path, 8, new_record("int8"), 0)
    with pytest.raises(ValueError, match="4 dimensions, the index 8"):
        store.append(np.zeros((3, 4), np.float32), 1)
    scores, ids = store.search(np.ones(8, np.float32), 3)
    assert (ids == -1).all() and np.isneginf(scores).all()
