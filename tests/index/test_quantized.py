"""Compact vectors (umr.core.quantize, umr.index.quantized): the int8 codecs, sign bits, base64,
Hamming and int8 search, rescoring, on hand examples, random vectors and real minilm vectors."""

from __future__ import annotations

import base64
import json
import struct

import faiss
import numpy as np
import pytest

import umr
from umr.core import quantize as qc
from umr.index import quantized as qi
from umr.models.matryoshka import renormalised_prefix


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top(queries: np.ndarray, rows: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = queries @ np.asarray(rows, np.float32).T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


SUBJECTS = ["the doctor", "a teacher", "my neighbour", "the fisherman", "an engineer", "the council", "a chef",
            "the students", "a journalist", "the farmer"]
VERBS = ["repaired", "painted", "sold", "studied", "photographed", "designed", "lost", "found", "cleaned", "tested"]
OBJECTS = ["the red bicycle", "an old violin", "the garden", "a satellite", "the manuscript", "a wooden boat",
           "the vaccine", "a tiny camera", "the cathedral", "a solar panel"]
PLACES = ["in Paris", "near the harbour", "at the market", "in the mountains", "after the storm", "on the train"]


@pytest.fixture(scope="module")
def minilm_vectors() -> np.ndarray:
    """384-d minilm vectors of 360 generated sentences (topics overlap, so neighbours exist)."""
    rng = np.random.default_rng(0)
    texts = sorted({f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} "
                    f"{rng.choice(PLACES)}." for _ in range(2000)})[:360]
    assert len(texts) == 360
    return umr.load_model("minilm").encode_candidates(texts, batch_size=64)


# -- int8 codecs -------------------------------------------------------------------------------------


def test_per_dimension_codec_round_trips_within_half_a_step_and_clips_nothing_it_was_fitted_on():
    x = unit(500, 24)
    codec = qc.PerDimensionInt8.fit(x)
    assert np.array_equal(codec.lo, x.min(0)) and np.array_equal(codec.hi, x.max(0)) and codec.rows == 500
    codes, clipped = codec.encode(x)
    assert codes.dtype == np.int8 and codes.shape == x.shape and clipped == 0
    assert codes.min() == -128 and codes.max() == 127  # each dimension's min and max reach the end levels
    assert (np.abs(codec.decode(codes) - x) <= codec.step / 2 + 1e-7).all()


def test_symmetric_codec_is_127_x_over_the_largest_value():
    x = unit(300, 16, seed=1)
    codec = qc.SymmetricInt8.fit(x)
    assert codec.absmax == pytest.approx(float(np.abs(x).max()))
    codes, clipped = codec.encode(x)
    expected = np.clip(np.rint(127 * x / codec.absmax), -128, 127)
    assert clipped == 0 and np.abs(codes - expected).max() <= 1 and (codes == expected).mean() > 0.9999
    assert np.abs(codes).max() == 127  # the largest value maps to 127 (-128 is never reached without clipping)
    assert np.allclose(codec.decode(codes), codes * np.float32(codec.absmax / 127), atol=1e-7)


def test_values_beyond_the_calibrated_range_are_clipped_and_counted():
    codec = qc.PerDimensionInt8.fit(np.array([[0.0, 0.0], [1.0, 1.0]], np.float32))
    codes, clipped = codec.encode(np.array([[2.0, 0.2], [-1.0, 1.0], [1.001, 0.0]], np.float32))
    # 2.0 and -1.0 lie far outside [0, 1]; 1.001 is within half a step (1/510) of 1 and codes as 127 exactly
    assert clipped == 2
    assert codes.tolist() == [[127, 51 - 128], [-128, 127], [127, -128]]
    symmetric = qc.SymmetricInt8(absmax=0.5, dim=3, rows=10)
    codes, clipped = symmetric.encode(np.array([[0.25, 0.6, -0.6]], np.float32))
    assert clipped == 2 and codes.tolist() == [[64, 127, -128]]


def test_recalibration_is_due_once_clipping_passes_the_share_and_the_rows_have_doubled():
    due = {"clipped": 11, "encoded": 10_000, "rows": 2_000, "calibrated_rows": 1_000}
    assert qc.recalibration_due(**due)
    assert not qc.recalibration_due(**{**due, "clipped": 10})       # 0.1% exactly: not above the share
    assert not qc.recalibration_due(**{**due, "rows": 1_999})       # not doubled yet
    assert not qc.recalibration_due(**{**due, "clipped": 0, "encoded": 0})


def test_a_constant_dimension_keeps_its_value_and_clips_any_other():
    x = np.array([[0.3, 0.0], [0.3, 1.0], [0.3, 0.5]], np.float32)
    codec = qc.PerDimensionInt8.fit(x)
    codes, clipped = codec.encode(x)
    assert clipped == 0 and np.allclose(codec.decode(codes)[:, 0], 0.3)
    assert codec.encode(np.array([[0.31, 0.5]], np.float32)).clipped == 1


def test_codec_calibration_survives_json_exactly_and_encodes_the_same():
    x = unit(200, 32, seed=2)
    for codec in (qc.PerDimensionInt8.fit(x), qc.SymmetricInt8.fit(x[:50])):
        doc = json.loads(json.dumps(codec.to_json()))
        again = qc.Int8Codec.from_json(doc)
        assert type(again) is type(codec) and again.rows == codec.rows and again.dim == 32
        assert np.array_equal(again.lo, codec.lo) and np.array_equal(again.step, codec.step)
        assert np.array_equal(again.encode(x).codes, codec.encode(x).codes)
    assert qc.Int8Codec.from_json(json.loads(json.dumps(qc.PerDimensionInt8.fit(x).to_json()))).kind == "per-dimension"
    with pytest.raises(ValueError, match="unknown int8 calibration kind 'float4'"):
        qc.Int8Codec.from_json({"kind": "float4", "rows": 1})


def test_codecs_refuse_what_they_cannot_code():
    with pytest.raises(ValueError, match="at least 2 vectors"):
        qc.PerDimensionInt8.fit(unit(1, 8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        qc.PerDimensionInt8.fit(np.array([[0.0, np.nan], [1.0, 1.0]], np.float32))
    codec = qc.PerDimensionInt8.fit(unit(10, 8))
    with pytest.raises(ValueError, match="NaN or infinite"):
        codec.encode(np.full((1, 8), np.inf, np.float32))
    with pytest.raises(ValueError, match="vectors have 4 dimensions, the codec 8"):
        codec.encode(unit(2, 4))
    with pytest.raises(ValueError, match="positive largest value"):
        qc.SymmetricInt8.fit(np.zeros((3, 4), np.float32))


def test_signed_and_unsigned_shift_by_128_for_every_byte():
    levels = np.arange(256, dtype=np.uint8)
    assert qc.signed(levels).tolist() == list(range(-128, 128))
    assert np.array_equal(qc.unsigned(qc.signed(levels)), levels)


def test_encoding_a_memory_map_reads_it_in_blocks(tmp_path, monkeypatch):
    x = unit(1000, 8, seed=3)
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(qc, "BLOCK_ROWS", 64)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    codec = qc.PerDimensionInt8.fit(mapped)
    assert np.array_equal(codec.lo, x.min(0)) and np.array_equal(codec.hi, x.max(0))
    assert np.array_equal(codec.encode(mapped).codes, qc.PerDimensionInt8.fit(x).encode(x).codes)


# -- real minilm vectors -----------------------------------------------------------------------------


def test_int8_codes_of_minilm_vectors_point_the_same_way(minilm_vectors):
    x = minilm_vectors
    symmetric = qc.SymmetricInt8.fit(x[:256])
    codes, clipped = symmetric.encode(x)
    assert codes.dtype == np.int8 and -128 <= codes.min() and codes.max() <= 127
    assert cosines(codes, x).min() >= 0.999  # the codes themselves: what an API user stores
    assert clipped <= 0.001 * x.size          # the 104 vectors it was not fitted on barely leave the range
    per_dimension = qc.PerDimensionInt8.fit(x)
    assert cosines(per_dimension.decode(per_dimension.encode(x).codes), x).min() >= 0.99


def test_int8_and_binary_search_of_minilm_vectors_find_the_float_neighbours(minilm_vectors, tmp_path):
    x, queries = minilm_vectors[:300], minilm_vectors[300:]
    truth = exact_top(queries, x, 10)
    codec = qc.PerDimensionInt8.fit(x)
    index = qi.int8_index(codec, codec.encode(x).codes)
    assert overlap(qi.int8_search(index, queries, 10)[1], truth) >= 0.95
    np.save(tmp_path / "rows.npy", x)
    rows = np.load(tmp_path / "rows.npy", mmap_mode="r")
    bits = qi.binary_index(qc.sign_bits(x))
    _, candidates = qi.hamming_search(bits, qc.sign_bits(queries), 40)
    assert overlap(qi.rescore(queries, candidates, rows, 10)[1], truth) >= 0.95
    assert overlap(candidates[:, :10], truth) < 0.95  # the sign bits alone do not get there


def test_quantising_a_matryoshka_prefix_codes_the_renormalised_prefix(minilm_vectors):
    short = renormalised_prefix(minilm_vectors, 128)
    codec = qc.SymmetricInt8.fit(short[:256])
    codes = codec.encode(short).codes
    assert codes.shape == (360, 128) and cosines(codes, short).min() >= 0.999
    assert not np.array_equal(codes, qc.SymmetricInt8.fit(minilm_vectors[:256]).encode(minilm_vectors).codes[:, :128])
    types = qc.embedding_types(short[:2], ["ubinary", "int8"], int8=codec)
    assert len(types["ubinary"][0]) == 16 and len(types["int8"][0]) == 128
    with pytest.raises(ValueError, match="vectors have 384 dimensions, the codec 128"):
        codec.encode(minilm_vectors)


# -- sign bits -------------------------------------------------------------------------------------


def test_sign_bits_are_packed_most_significant_bit_first_with_zero_counted_as_positive():
    x = np.array([[0.5, -1.0, 0.0, -0.0, 2.0, -3.0, 1e-9, -1e-9, 0.1]], np.float32)
    # bits 1 0 1 1 1 0 1 0 | 1 (then 7 zero pad bits)
    assert qc.sign_bits(x).tolist() == [[0b10111010, 0b10000000]]
    assert qc.signed(qc.sign_bits(x)).tolist() == [[186 - 128, 0]]
    assert qc.sign_bits(x).dtype == np.uint8


@pytest.mark.slow  # importing sentence-transformers takes seconds
def test_sign_bits_equal_sentence_transformers_where_no_value_is_zero():
    quantization = pytest.importorskip("sentence_transformers.util.quantization")
    x = unit(50, 40, seed=4)
    assert np.array_equal(qc.sign_bits(x), quantization.quantize_embeddings(x, "ubinary"))
    assert np.array_equal(qc.signed(qc.sign_bits(x)), quantization.quantize_embeddings(x, "binary"))


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a[:, None, :] ^ b[None, :, :], axis=2).sum(2)


def test_hamming_search_returns_the_nearest_codes_and_honours_the_mask():
    x, queries = unit(600, 64, seed=5), unit(7, 64, seed=6)
    bits, qbits = qc.sign_bits(x), qc.sign_bits(queries)
    index = qi.binary_index(bits)
    mask = np.zeros(600, bool)
    mask[::3] = True
    dist, ids = qi.hamming_search(index, qbits, 10, mask=mask)
    assert (ids % 3 == 0).all()
    ref = np.where(mask[None, :], hamming(qbits, bits), 10**6)
    assert np.array_equal(dist, np.sort(ref, axis=1)[:, :10])
    assert np.array_equal(np.take_along_axis(ref, ids, 1), dist)
    knn_dist, knn_ids = qi.hamming_knn(qbits, bits, 10, mask=mask)
    assert np.array_equal(knn_dist, dist) and (knn_ids % 3 == 0).all()
    plain, _ = qi.hamming_search(index, qbits, 10)
    assert np.array_equal(plain, np.sort(hamming(qbits, bits), axis=1)[:, :10])


def test_hamming_search_pads_with_minus_one_when_the_mask_lets_fewer_than_k_through():
    x = unit(50, 16, seed=7)
    index = qi.binary_index(qc.sign_bits(x))
    mask = np.zeros(50, bool)
    mask[[4, 9, 30]] = True
    for _, ids in (qi.hamming_search(index, qc.sign_bits(x[:2]), 5, mask=mask),
                   qi.hamming_knn(qc.sign_bits(x[:2]), qc.sign_bits(x), 5, mask=mask)):
        assert sorted(ids[0, :3]) == [4, 9, 30] and (ids[:, 3:] == -1).all()


def test_binary_hnsw_search_honours_the_mask():
    x = unit(2000, 128, seed=8)
    graph = faiss.IndexBinaryHNSW(128, 16)
    graph.add(qc.sign_bits(x))
    mask = np.arange(2000) % 2 == 1
    _, ids = qi.hamming_search(graph, qc.sign_bits(x[:20]), 10, mask=mask, ef_search=64)
    assert (ids >= 0).all() and (ids % 2 == 1).all()


def test_a_binary_index_of_odd_width_pads_its_last_byte():
    x = unit(30, 12, seed=9)
    index = qi.binary_index(qc.sign_bits(x))
    # 12 bits take 2 bytes, held as 4 (faiss's smallest specialised width); the extra bytes are 0
    assert index.d == 32 and index.ntotal == 30 and qi.binary_index(dim=12).d == 32
    assert np.array_equal(qi.index_codes(index)[:, :2], qc.sign_bits(x)) and not qi.index_codes(index)[:, 2:].any()
    dist, ids = qi.hamming_search(index, qc.sign_bits(x[:3]), 1)
    assert ids[:, 0].tolist() == [0, 1, 2] and (dist == 0).all()


@pytest.mark.parametrize(("width", "padded"), [(1, 4), (2, 4), (4, 4), (5, 8), (12, 16), (16, 16), (17, 20),
                                                (21, 32), (32, 32), (48, 64), (64, 64), (65, 72), (96, 96),
                                                (100, 104), (192, 192)])
def test_sign_bit_codes_are_padded_to_the_next_width_faiss_compares_fast(width, padded):
    assert qi.padded_width(width) == padded
    assert qi.padded_width(padded) == padded  # padding twice changes nothing
    bits = np.random.default_rng(width).integers(0, 256, (3, width), dtype=np.uint8)
    out = qi.pad_bits(bits)
    assert out.shape == (3, padded) and np.array_equal(out[:, :width], bits) and not out[:, width:].any()
    with pytest.raises(ValueError, match=f"codes of {width} bytes do not fit in {width - 1}"):
        qi.pad_bits(bits, width - 1)


@pytest.mark.parametrize("dim", [384, 768, 1536, 100])  # 48 -> 64 bytes; 96, 192, 13 -> 16
def test_padding_leaves_hamming_distances_and_rankings_as_on_the_stored_codes(dim):
    x, queries = unit(3000, dim, seed=dim), unit(20, dim, seed=dim + 1)
    bits, qbits = qc.sign_bits(x), qc.sign_bits(queries)
    unpadded = faiss.IndexBinaryFlat(8 * bits.shape[1])  # faiss on the codes as stored
    unpadded.add(bits)
    want_dist, want_ids = unpadded.search(qbits, 50)
    index = qi.binary_index(bits)
    assert index.code_size == qi.padded_width(bits.shape[1])
    mask = np.arange(3000) % 4 != 1
    for dist, ids in (qi.hamming_search(index, qbits, 50), qi.hamming_knn(qbits, bits, 50),
                      qi.hamming_knn(qbits, qi.index_codes(index), 50)):
        assert np.array_equal(dist, want_dist) and np.array_equal(ids, want_ids)
    assert np.array_equal(want_dist, np.sort(hamming(qbits, bits), axis=1)[:, :50])
    masked = unpadded.search(qbits, 50, params=faiss.SearchParameters(sel=qi.bitmap_selector(mask)))
    for dist, ids in (qi.hamming_search(index, qbits, 50, mask=mask), qi.hamming_knn(qbits, bits, 50, mask=mask)):
        assert np.array_equal(dist, masked[0]) and np.array_equal(ids, masked[1])


# -- int8 search and exact block search ------------------------------------------------------------


def test_int8_index_holds_the_codes_as_given_and_decodes_as_the_codec():
    x = unit(400, 24, seed=10)
    codec = qc.PerDimensionInt8.fit(x)
    codes = codec.encode(x).codes
    index = qi.int8_index(codec, codes)
    assert index.ntotal == 400 and np.array_equal(qi.index_codes(index), qc.unsigned(codes))
    assert np.abs(index.sa_decode(qi.index_codes(index)) - codec.decode(codes)).max() <= 1e-6
    index.add_sa_codes(np.ascontiguousarray(qc.unsigned(codes[:5])))
    assert index.ntotal == 405


@pytest.mark.parametrize("n_queries", [3, 40])  # faiss's scan of the codes, and decoded blocks
def test_int8_search_is_exact_over_the_decoded_rows_and_honours_the_mask(n_queries, monkeypatch):
    monkeypatch.setattr(qc, "BLOCK_ROWS", 128)  # several blocks, the last one short
    x, queries = unit(1000, 32, seed=11), unit(n_queries, 32, seed=12)
    codec = qc.PerDimensionInt8.fit(x)
    codes = codec.encode(x).codes
    index = qi.int8_index(codec, codes)
    decoded = codec.decode(codes)
    scores, ids = qi.int8_search(index, queries, 10)
    assert np.array_equal(ids, exact_top(queries, decoded, 10))
    assert np.allclose(scores, np.take_along_axis(queries @ decoded.T, ids, 1), atol=1e-5)
    mask = np.zeros(1000, bool)
    mask[100:250] = True
    mask[990:] = True
    _, ids = qi.int8_search(index, queries, 10, mask=mask)
    assert mask[ids].all() and np.array_equal(ids, exact_top(queries, decoded, 10, mask))
    tiny = np.zeros(1000, bool)
    tiny[[5, 500]] = True
    scores, ids = qi.int8_search(index, queries, 4, mask=tiny)
    assert (np.sort(ids[:, :2], axis=1) == [5, 500]).all() and (ids[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()


def test_knn_ip_over_float16_rows_in_blocks_is_exact():
    x, queries = unit(777, 16, seed=13).astype(np.float16), unit(5, 16, seed=14)
    scores, ids = qi.knn_ip(queries, x, 7, block=100)
    assert np.array_equal(ids, exact_top(queries, x, 7))
    assert np.allclose(scores, np.take_along_axis(queries @ x.astype(np.float32).T, ids, 1), atol=1e-6)


# -- rescoring ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_rescoring_every_row_from_a_memory_map_is_exact_search(tmp_path, dtype):
    x, queries = unit(500, 48, seed=15).astype(dtype), unit(30, 48, seed=16)
    np.save(tmp_path / "rows.npy", x)
    rows = np.load(tmp_path / "rows.npy", mmap_mode="r")
    _, candidates = qi.hamming_search(qi.binary_index(qc.sign_bits(x)), qc.sign_bits(queries), 500)
    assert (candidates >= 0).all()  # rescore_k >= N: every row is a candidate
    scores, ids = qi.rescore(queries, candidates, rows, 10)
    exact = queries @ x.astype(np.float32).T
    assert np.array_equal(ids, exact_top(queries, x, 10))
    assert np.allclose(scores, np.take_along_axis(exact, ids, 1), atol=1e-6)


def test_rescoring_keeps_the_best_candidates_and_pads_missing_ones():
    rows = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]], np.float32)
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    candidates = np.array([[3, 1, 2, -1], [0, -1, -1, -1]])
    scores, ids = qi.rescore(queries, candidates, rows, 3)
    assert ids.tolist() == [[2, 1, 3], [0, -1, -1]]
    assert np.allclose(scores[0], [0.6, 0.0, -1.0]) and scores[1, 0] == 0.0 and np.isneginf(scores[1, 1:]).all()
    with pytest.raises(ValueError, match="2 queries but candidates for 1"):
        qi.rescore(queries, candidates[:1], rows, 3)


def test_default_rescore_depth_is_twenty_times_k_and_at_least_200():
    assert qi.default_rescore_k(1) == 200 and qi.default_rescore_k(10) == 200 and qi.default_rescore_k(50) == 1000


# -- base64 and the API's embedding types ---------------------------------------------------------


def test_base64_is_the_float32_little_endian_bytes():
    v = np.array([[1.0, -2.5, 0.1]], np.float32)
    (text,) = qc.to_base64(v)
    assert text == base64.b64encode(struct.pack("<3f", 1.0, -2.5, np.float32(0.1))).decode()
    assert np.array_equal(qc.from_base64(text), v[0])
    assert np.array_equal(np.frombuffer(base64.b64decode(text), dtype="float32"), v[0])  # as the openai client reads it
    with pytest.raises(ValueError, match="not a whole number of float32 values"):
        qc.from_base64(base64.b64encode(b"12345").decode())


def test_embedding_types_gives_each_requested_type_in_its_range():
    x = unit(3, 20, seed=17)
    codec = qc.SymmetricInt8.fit(unit(100, 20, seed=18))
    out = qc.embedding_types(x, ["ubinary", "float", "int8", "uint8", "binary", "base64", "int8"], int8=codec)
    assert list(out) == ["ubinary", "float", "int8", "uint8", "binary", "base64"]
    assert np.allclose(out["float"], x) and all(isinstance(v, float) for v in out["float"][0])
    assert out["int8"] == codec.encode(x).codes.tolist() and all(type(v) is int for v in out["int8"][0])
    assert (np.array(out["uint8"]) == np.array(out["int8"]) + 128).all()
    assert len(out["ubinary"][0]) == 3 and (np.array(out["binary"]) == np.array(out["ubinary"]) - 128).all()
    assert np.array_equal(np.stack([qc.from_base64(s) for s in out["base64"]]), x)
    with pytest.raises(ValueError, match="unknown embedding type\\(s\\) 'int4'"):
        qc.embedding_types(x, ["float", "int4"])
    with pytest.raises(ValueError, match="need an int8 codec"):
        qc.embedding_types(x, ["uint8"])
