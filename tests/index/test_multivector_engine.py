"""The late-interaction engine (umr.index.multivector): exact MaxSim against a naive loop, its
blocking and masks, the storage encodings' measured error, MUVERA's fixed-dimensional encodings,
the first stages with their exact rerank, and token pooling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage

from umr.index.multivector import (BinaryEncoding, Float16Encoding, Float32Encoding, Int8Encoding, TokenVectors,
                                   encoding_from_state, maxsim, maxsim_topk, rerank)
from umr.index.multivector.first_stage import (LateInteractionSearch, MuveraStage, PooledStage,
                                               make_first_stage)
from umr.index.multivector.muvera import Muvera
from umr.index.multivector.pooling import cluster_tokens, pool_documents, pool_tokens


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _random_sets(rng, n, lo, hi, dim):
    """``n`` sets of ``lo``..``hi`` random unit vectors (as a model's normalised token vectors)."""
    return [_unit(rng.standard_normal((int(rng.integers(lo, hi + 1)), dim))) for _ in range(n)]


def _pages(seed: int, n_docs: int = 300, dim: int = 64, n_topics: int = 12, n_queries: int = 30):
    """Unit token vectors of documents around three of ``n_topics`` topics each (ragged, 20-60
    tokens); queries of 8 tokens drawn near a random document's tokens."""
    rng = np.random.default_rng(seed)
    topics = _unit(rng.standard_normal((n_topics, dim)))
    docs = []
    for _ in range(n_docs):
        own = topics[rng.choice(n_topics, 3, replace=False)]
        centers = _unit(own + 0.5 * rng.standard_normal(own.shape) / np.sqrt(dim))
        length = int(rng.integers(20, 61))
        docs.append(_unit(centers[rng.integers(0, 3, length)] + 0.7 * rng.standard_normal((length, dim)) / np.sqrt(dim)))
    targets = rng.choice(n_docs, n_queries, replace=False)
    queries = [_unit(docs[t][rng.choice(len(docs[t]), 8, replace=False)] + rng.standard_normal((8, dim)) / np.sqrt(dim))
               for t in targets]
    return docs, queries


def _naive_maxsim(query: np.ndarray, doc: np.ndarray) -> float:
    total = 0.0
    for q in query:
        best = -np.inf
        for d in doc:
            best = max(best, float(np.dot(q.astype(np.float64), d.astype(np.float64))))
        total += best
    return total


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


# -- exact MaxSim ---------------------------------------------------------------------------------

def test_maxsim_equals_a_naive_loop_on_ragged_queries_and_documents():
    rng = np.random.default_rng(0)
    docs, queries = _random_sets(rng, 40, 1, 30, 24), _random_sets(rng, 6, 1, 9, 24)
    expected = np.array([[_naive_maxsim(q, d) for d in docs] for q in queries])
    got = maxsim(queries, TokenVectors.from_arrays(docs, Float32Encoding(24)))
    assert got.shape == (6, 40)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    # float16 storage: exact MaxSim of what was stored
    stored = TokenVectors.from_arrays(docs)
    assert stored.codes.dtype == np.float16
    expected16 = np.array([[_naive_maxsim(q, stored[i]) for i in range(len(docs))] for q in queries])
    np.testing.assert_allclose(maxsim(queries, stored), expected16, atol=1e-5, rtol=0)


def test_padding_never_matches_a_query_token():
    # every product of the query token with the short document is negative: its true best is -0.5,
    # where a zero-padded batch (colpali-engine's batched scorer) would give 0
    short = np.array([[-0.5, 0.0]], np.float32)
    long = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32)
    docs = TokenVectors.from_arrays([long, short, long], Float32Encoding(2))
    query = [np.array([[1.0, 0.0]], np.float32)]
    for block_tokens in (1, 3, 4, None):
        np.testing.assert_allclose(maxsim(query, docs, block_tokens=block_tokens), [[1.0, -0.5, 1.0]])
    # a padded model batch: the masked rows (zero vectors) are dropped, not scored
    padded = np.zeros((2, 3, 2), np.float32)
    padded[0] = long
    padded[1, 0] = short[0]
    from_batch = TokenVectors.from_padded(padded, np.array([[1, 1, 1], [1, 0, 0]]), Float32Encoding(2))
    np.testing.assert_array_equal(from_batch.lengths, [3, 1])
    np.testing.assert_allclose(maxsim(query, from_batch), [[1.0, -0.5]])


def test_blocked_equals_unblocked_for_every_encoding():
    rng = np.random.default_rng(1)
    docs, queries = _random_sets(rng, 50, 1, 40, 20), _random_sets(rng, 4, 1, 7, 20)
    sample = np.concatenate(docs)
    for encoding in (Float32Encoding(20), Float16Encoding(20), Int8Encoding.fit(sample), BinaryEncoding.fit(sample)):
        stored = TokenVectors.from_arrays(docs, encoding)
        whole = maxsim(queries, stored, block_tokens=10**9)
        for block_tokens in (1, 17, 64, None):
            np.testing.assert_allclose(maxsim(queries, stored, block_tokens=block_tokens), whole, atol=1e-5, rtol=0)
        # equal-length documents take the reshape path: same scores as the ragged one
        same_length = TokenVectors.from_arrays([d[:1] for d in docs], encoding)
        expected = np.array([[_naive_maxsim(q, same_length[i]) for i in range(len(docs))] for q in queries])
        np.testing.assert_allclose(maxsim(queries, same_length, block_tokens=8), expected, atol=1e-5, rtol=0)


def _numpy_maxsim(queries: list[np.ndarray], docs: list[np.ndarray]) -> np.ndarray:
    """Plain numpy MaxSim in float64, one (query, document) pair at a time."""
    return np.array([[(q.astype(np.float64) @ d.astype(np.float64).T).max(axis=1).sum() for d in docs]
                     for q in queries])


@pytest.mark.parametrize("storage", ["float32", "float16", "int8", "binary"])
def test_blocked_kernel_equals_plain_numpy_on_ragged_documents(storage):
    # ragged documents (1..300 tokens, so default-sized and tiny blocks both cut between and
    # around documents), a batch of ragged queries and a single query: the scores of what was
    # stored, decoded, whatever the block size
    rng = np.random.default_rng(7)
    dim = 36  # not a multiple of 8: the sign bits' padding must meet zero query weights
    docs, queries = _random_sets(rng, 90, 1, 300, dim), _random_sets(rng, 9, 1, 25, dim)
    sample = np.concatenate(docs)
    encoding = {"float32": Float32Encoding(dim), "float16": Float16Encoding(dim),
                "int8": Int8Encoding.fit(sample), "binary": BinaryEncoding.fit(sample)}[storage]
    stored = TokenVectors.from_arrays(docs, encoding)
    expected = _numpy_maxsim(queries, stored.decoded())
    for block_tokens in (None, 1, 299, 1000):
        np.testing.assert_allclose(maxsim(queries, stored, block_tokens=block_tokens), expected, atol=1e-4, rtol=0)
        np.testing.assert_allclose(maxsim(queries[:1], stored, block_tokens=block_tokens), expected[:1],
                                   atol=1e-4, rtol=0)
    scores, rows = maxsim_topk(queries, stored, 10)  # compared by score: near-ties may swap rows
    np.testing.assert_allclose(scores, -np.sort(-expected, axis=1)[:, :10], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(expected, rows, 1), scores, atol=1e-4, rtol=0)


def test_topk_and_rerank_agree_with_the_full_score_matrix():
    rng = np.random.default_rng(2)
    docs, queries = _random_sets(rng, 120, 2, 25, 16), _random_sets(rng, 5, 3, 6, 16)
    stored = TokenVectors.from_arrays(docs, Float32Encoding(16))
    full = maxsim(queries, stored)
    scores, rows = maxsim_topk(queries, stored, 7, block_tokens=50)
    np.testing.assert_array_equal(rows, np.argsort(-full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(scores, np.take_along_axis(full, rows, 1), rtol=1e-6)
    # a mask leaves documents out; fewer allowed than k: the tail is (-inf, -1)
    allowed = np.zeros(120, bool)
    allowed[[3, 50, 99]] = True
    scores, rows = maxsim_topk(queries, stored, 5, allowed=allowed)
    assert set(rows[:, :3].ravel()) == {3, 50, 99} and np.all(rows[:, 3:] == -1) and np.all(np.isinf(scores[:, 3:]))
    # rerank: each query its own candidates, -1 and repeats ignored
    candidates = np.array([[5, 5, -1, 17, 80]] * 5)
    scores, rows = rerank(queries, stored, candidates, 2)
    for i in range(5):
        best = sorted([5, 17, 80], key=lambda r: -full[i, r])[:2]
        assert list(rows[i]) == best
        np.testing.assert_allclose(scores[i], full[i, best], rtol=1e-6)
    with pytest.raises(ValueError, match="boolean mask"):
        maxsim_topk(queries, stored, 3, allowed=np.ones(5, bool))


def test_collections_refuse_empty_documents_and_mismatched_dimensions():
    with pytest.raises(ValueError, match="document 1 has no token vectors"):
        TokenVectors.from_arrays([np.ones((2, 4)), np.ones((0, 4))])
    with pytest.raises(ValueError, match="document 1"):
        TokenVectors.from_arrays([np.ones((2, 4)), np.ones((2, 5))])
    with pytest.raises(ValueError, match="non-finite"):
        TokenVectors.from_arrays([np.full((2, 4), np.nan)])
    docs = TokenVectors.from_arrays([np.ones((2, 4), np.float32)])
    with pytest.raises(ValueError, match="4-d"):
        maxsim([np.ones((1, 3), np.float32)], docs)


def test_take_gathers_documents_in_order():
    rng = np.random.default_rng(3)
    docs = _random_sets(rng, 10, 1, 6, 8)
    stored = TokenVectors.from_arrays(docs, Float32Encoding(8))
    taken = stored.take([7, 2, 7])
    assert len(taken) == 3
    for i, row in enumerate([7, 2, 7]):
        np.testing.assert_array_equal(taken[i], docs[row])


# -- storage encodings ----------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [16, 12])
def test_folded_scoring_equals_scoring_the_decoded_vectors(dim):
    rng = np.random.default_rng(4)
    docs, queries = _random_sets(rng, 30, 1, 12, dim), _random_sets(rng, 3, 1, 5, dim)
    sample = np.concatenate(docs)
    for encoding in (Float16Encoding(dim), Int8Encoding.fit(sample), Int8Encoding.fit(sample, symmetric=True),
                     BinaryEncoding.fit(sample), BinaryEncoding(dim)):
        stored = TokenVectors.from_arrays(docs, encoding)
        decoded = TokenVectors.from_arrays(stored.decoded(), Float32Encoding(dim))
        np.testing.assert_allclose(maxsim(queries, stored), maxsim(queries, decoded), atol=1e-5, rtol=1e-6)
        again = encoding_from_state(encoding.state())
        np.testing.assert_array_equal(again.decode(stored.codes), encoding.decode(stored.codes))
        assert encoding.bytes_per_token == {"float16": 2 * dim, "int8": dim, "binary": (dim + 7) // 8}[encoding.name]


def test_codes_follow_the_shared_scalar_and_sign_definitions():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    x[0, :3] = [0.0, -0.0, -1e-9]
    # symmetric int8: rint(127 x / a), a = max |x|
    a = np.abs(x).max()
    np.testing.assert_array_equal(Int8Encoding.fit(x, symmetric=True).encode(x), np.rint(127 * x / a).astype(np.int8))
    # per dimension: 256 levels over [min, max], nearest; decoded within half a step
    per_dim = Int8Encoding.fit(x)
    assert np.all(np.abs(per_dim.decode(per_dim.encode(x)) - x) <= per_dim.step / 2 + 1e-6)
    # sign bits: set where x >= 0 (zero included), MSB first
    np.testing.assert_array_equal(BinaryEncoding(16).encode(x), np.packbits(x >= 0, axis=1))
    assert BinaryEncoding(16).encode(x)[0, 0] >> 5 == 0b110


def test_token_codes_are_the_shared_codec_s_bytes():
    """The index's int8 and sign-bit token codes are :mod:`umr.core.quantize`'s, byte for byte (the
    codec of the single-vector index and the API), and their calibration is stored as its JSON."""
    from umr.core.quantize import Int8Codec, PerDimensionInt8, SymmetricInt8, sign_bits

    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    beyond = 3 * x[:20]  # values past the calibrated range are clipped, as the shared codec clips them
    for encoding, codec in ((Int8Encoding.fit(x), PerDimensionInt8.fit(x)),
                            (Int8Encoding.fit(x, symmetric=True), SymmetricInt8.fit(x))):
        for values in (x, beyond):
            np.testing.assert_array_equal(encoding.encode(values), codec.encode(values).codes)
        np.testing.assert_array_equal(encoding.decode(encoding.encode(x)), codec.decode(codec.encode(x).codes))
        assert Int8Codec.from_json(encoding.state()["codec"]).to_json() == codec.to_json()
    np.testing.assert_array_equal(BinaryEncoding(24).encode(x), sign_bits(x))


def test_int8_token_storage_of_earlier_indexes_stays_readable():
    """Indexes written before the shared codec recorded ``lo`` and ``step``: read as the same
    per-dimension range, their codes decode to the same values (to float32 rounding)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((300, 24)).astype(np.float32)
    lo, hi = x.min(axis=0), x.max(axis=0)
    step = ((hi - lo) / 255).astype(np.float32)
    legacy = {"name": "int8", "dim": 24, "lo": lo.tolist(), "step": step.tolist()}
    codes = (np.clip(np.rint((x - lo) / step), 0, 255) - 128).astype(np.int8)  # how they were written
    encoding = encoding_from_state(legacy)
    np.testing.assert_allclose(encoding.decode(codes), lo + (codes.astype(np.float32) + 128) * step, atol=1e-6)
    np.testing.assert_array_equal(encoding.encode(x), codes)


def test_each_encoding_costs_the_measured_score_error():
    """Measured on these pages (4 seeds, 64-d unit tokens): float16 max relative error 2.4e-4 and
    top-10 overlap 0.997-1.0; int8 per dimension 1.05e-2 / mean 1.1e-3 / 0.98-0.993; symmetric
    int8 1.2e-2 / 1.6e-3 / 0.973-0.993; sign bits mean 0.17 / 0.71-0.75. Bounds with margin."""
    bounds = {"float16": (1e-3, 1e-4, 0.99), "int8": (3e-2, 3e-3, 0.95), "int8-symmetric": (3e-2, 4e-3, 0.95),
              "binary": (None, 0.25, 0.6)}
    for seed in (0, 1):
        docs, queries = _pages(seed)
        sample = np.concatenate(docs)
        exact = maxsim(queries, TokenVectors.from_arrays(docs, Float32Encoding(64)))
        top = np.argsort(-exact, 1)[:, :10]
        encodings = {"float16": Float16Encoding(64), "int8": Int8Encoding.fit(sample),
                     "int8-symmetric": Int8Encoding.fit(sample, symmetric=True), "binary": BinaryEncoding.fit(sample)}
        for name, encoding in encodings.items():
            got = maxsim(queries, TokenVectors.from_arrays(docs, encoding))
            relative = np.abs(got - exact) / np.abs(exact)
            max_rel, mean_rel, min_overlap = bounds[name]
            assert max_rel is None or relative.max() <= max_rel, (name, relative.max())
            assert relative.mean() <= mean_rel, (name, relative.mean())
            assert _overlap(top, np.argsort(-got, 1)[:, :10]) >= min_overlap, name


# -- MUVERA ---------------------------------------------------------------------------------------

def _chamfer(queries, docs) -> np.ndarray:
    return np.array([[float((q @ d.T).max(axis=1).sum()) for d in docs] for q in queries])


def test_fde_is_deterministic_with_a_seed_and_persists_its_draws():
    rng = np.random.default_rng(6)
    docs = _random_sets(rng, 8, 3, 20, 16)
    first, again = Muvera(16, seed=3, final_dim=256), Muvera(16, seed=3, final_dim=256)
    np.testing.assert_array_equal(first.encode_documents(docs), again.encode_documents(docs))
    np.testing.assert_array_equal(first.encode_queries(docs), again.encode_queries(docs))
    assert not np.allclose(first.encode_documents(docs), Muvera(16, seed=4, final_dim=256).encode_documents(docs))
    # rebuilt from its parameters and drawn arrays (what a store persists): identical encodings
    restored = Muvera.from_arrays(first.params(), {k: v.copy() for k, v in first.arrays().items()})
    np.testing.assert_array_equal(restored.encode_documents(docs), first.encode_documents(docs))
    assert first.fde_dim == 256 and Muvera(16, k_sim=3, d_proj=8, repetitions=5).fde_dim == 5 * 8 * 8


def test_fde_with_one_bucket_is_the_sum_against_the_mean():
    rng = np.random.default_rng(7)
    docs, queries = _random_sets(rng, 5, 2, 9, 8), _random_sets(rng, 3, 1, 4, 8)
    m = Muvera(8, k_sim=0, d_proj=None, repetitions=3)
    got = m.encode_queries(queries) @ m.encode_documents(docs).T
    expected = np.array([[3 * float(q.sum(0) @ d.mean(0)) for d in docs] for q in queries])
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def _clustered(rng, spread: float, dim: int = 32):
    """60 documents of 4 clusters x 6 tokens (of 40 centers, ``spread`` apart); 10 queries of 5
    tokens near document i's own tokens (query i's matching document is document i)."""
    centers = _unit(rng.standard_normal((40, dim)))
    docs = [_unit(centers[rng.choice(40, 4, replace=False)].repeat(6, 0) + spread * rng.standard_normal((24, dim)))
            for _ in range(60)]
    queries = [_unit(docs[i][rng.choice(24, 5, replace=False)] + spread * rng.standard_normal((5, dim)))
               for i in range(10)]
    return docs, queries


def _fde_estimate(encoder: Muvera, queries, docs) -> np.ndarray:
    return encoder.encode_queries(queries) @ encoder.encode_documents(docs).T / encoder.repetitions


def test_fde_dot_product_never_exceeds_chamfer_without_projection():
    # each query token meets the mean of its bucket's document tokens, or one filled-in token:
    # never more than its best match, so FDE / R <= Chamfer for every pair
    rng = np.random.default_rng(8)
    docs, queries = _random_sets(rng, 30, 1, 20, 16), _random_sets(rng, 8, 1, 6, 16)
    for k_sim in (0, 3, 5):
        estimate = _fde_estimate(Muvera(16, k_sim=k_sim, d_proj=None, repetitions=5, seed=k_sim), queries, docs)
        assert np.all(estimate <= _chamfer(queries, docs) + 1e-5)


def test_fde_dot_product_approximates_chamfer_similarity():
    """Measured (seed 8): relative error on the matching pairs 0.77 / 0.47 / 0.26 / 0.16 for
    k_sim 0 / 2 / 4 / 6 at spread 0.05, and 0.06 at k_sim 6, spread 0.02; correlation with
    Chamfer over all pairs 0.96-0.98 from k_sim 2, where the matching document is always first."""
    rng = np.random.default_rng(8)
    docs, queries = _clustered(rng, 0.05)
    exact, matching = _chamfer(queries, docs), np.arange(10)

    def matching_error(encoder: Muvera) -> float:
        estimate = _fde_estimate(encoder, queries, docs)
        return float(np.mean(np.abs(estimate[matching, matching] - exact[matching, matching]) / exact[matching, matching]))

    errors = [matching_error(Muvera(32, k_sim=k, d_proj=None, repetitions=20)) for k in (0, 2, 4, 6)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.25, errors  # finer partitions: closer
    estimate = _fde_estimate(Muvera(32, k_sim=4, d_proj=None, repetitions=20), queries, docs)
    assert np.corrcoef(estimate.ravel(), exact.ravel())[0, 1] > 0.95
    np.testing.assert_array_equal(estimate.argmax(axis=1), matching)
    tight_docs, tight_queries = _clustered(rng, 0.02)
    tight = _fde_estimate(Muvera(32, k_sim=6, d_proj=None, repetitions=20), tight_queries, tight_docs)
    tight_exact = _chamfer(tight_queries, tight_docs)
    assert np.mean(np.abs(tight[matching, matching] - tight_exact[matching, matching])
                   / tight_exact[matching, matching]) < 0.1


def test_fde_projection_preserves_inner_products_in_expectation():
    # the same SimHash partitions (drawn first from the seed), 24 independent ±1 projections:
    # their mean estimate is the unprojected one
    rng = np.random.default_rng(9)
    docs, queries = _clustered(rng, 0.05)
    plain = Muvera(32, k_sim=3, d_proj=None, repetitions=4, seed=0)
    reference = _fde_estimate(plain, queries, docs)
    estimates = []
    for seed in range(24):
        projected = Muvera(32, k_sim=3, d_proj=8, repetitions=4, seed=seed)
        projected.simhash = plain.simhash
        estimates.append(_fde_estimate(projected, queries, docs))
    mean = np.mean(estimates, axis=0)
    # unbiased: the mean's error shrinks as 1/sqrt(24) ~ 0.2 of one draw's (measured: 0.15 vs 0.70 of
    # the reference's mean magnitude); a biased projection would keep its bias however many draws
    single = np.mean([np.mean(np.abs(e - reference)) for e in estimates])
    assert np.mean(np.abs(mean - reference)) < 0.3 * single
    assert np.mean(np.abs(mean - reference)) < 0.25 * np.mean(np.abs(reference))


def test_fde_fills_empty_document_buckets_with_the_nearest_token():
    rng = np.random.default_rng(9)
    dim, k_sim = 16, 3
    docs = _random_sets(rng, 6, 1, 5, dim)  # few tokens: most of the 8 buckets are empty
    filled = Muvera(dim, k_sim=k_sim, d_proj=None, repetitions=2, seed=1)
    empty = Muvera(dim, k_sim=k_sim, d_proj=None, repetitions=2, seed=1, fill_empty=False)
    blocks = filled.encode_documents(docs).reshape(6, 2, 8, dim)
    bare = empty.encode_documents(docs).reshape(6, 2, 8, dim)
    weights = 1 << np.arange(k_sim - 1, -1, -1)
    for i, doc in enumerate(docs):
        for r in range(2):
            patterns = (doc @ filled.simhash[r] > 0).astype(int) @ weights
            for b in range(8):
                if b in patterns:
                    np.testing.assert_allclose(blocks[i, r, b], doc[patterns == b].mean(0), rtol=1e-5, atol=1e-6)
                    continue
                distances = [bin(int(p) ^ b).count("1") for p in patterns]
                np.testing.assert_allclose(blocks[i, r, b], doc[int(np.argmin(distances))], rtol=1e-6)
                assert not bare[i, r, b].any()


def test_fde_final_projection_is_a_count_sketch():
    rng = np.random.default_rng(10)
    docs = _random_sets(rng, 4, 2, 8, 8)
    plain = Muvera(8, k_sim=2, d_proj=4, repetitions=3, seed=2)
    sketched = Muvera(8, k_sim=2, d_proj=4, repetitions=3, seed=2, final_dim=10)
    sketched.simhash, sketched.projection = plain.simhash, plain.projection
    expected = np.zeros((4, 10), np.float32)
    full = plain.encode_documents(docs)
    for j in range(full.shape[1]):
        expected[:, sketched.final_index[j]] += sketched.final_sign[j] * full[:, j]
    np.testing.assert_allclose(sketched.encode_documents(docs), expected, rtol=1e-5, atol=1e-6)


# -- first stage + rerank -------------------------------------------------------------------------

@pytest.mark.parametrize("method, options", [("muvera", {"k_sim": 4, "d_proj": 16, "repetitions": 10}),
                                             ("pooled", {"n_vectors": 4, "token_k": 200}),
                                             ("pooled", {"n_vectors": 1, "token_k": 300})])
def test_first_stage_and_rerank_find_the_exact_top10(method, options):
    docs, queries = _pages(11)
    stored = TokenVectors.from_arrays(docs)
    exact_scores, exact = LateInteractionSearch(stored).search(queries, 10)
    stage = make_first_stage(method, 64, **options)
    stage.add(stored.take(np.arange(150)))  # added in two parts, as segments are
    stage.add(stored.take(np.arange(150, 300)))
    search = LateInteractionSearch(stored, stage)
    scores, rows = search.search(queries, 10, depth=90)
    assert _overlap(exact, rows) >= 0.97
    np.testing.assert_allclose(scores[rows == exact], exact_scores[rows == exact], rtol=1e-6)  # exact MaxSim
    # a mask: only allowed documents come back, and with depth enough they are the exact ones
    allowed = np.zeros(300, bool)
    allowed[::3] = True
    _, masked = search.search(queries, 10, depth=100, allowed=allowed)
    assert np.all(allowed[masked[masked >= 0]])
    _, exact_masked = LateInteractionSearch(stored).search(queries, 10, allowed=allowed)
    assert _overlap(exact_masked, masked) >= 0.97


def test_first_stage_parameters_and_errors():
    stage = MuveraStage(8, k_sim=2, d_proj=4, repetitions=3, final_dim=16)
    assert stage.params() == {"method": "muvera", "dim": 8, "index_factory": "Flat", "k_sim": 2, "d_proj": 4,
                              "repetitions": 3, "final_dim": 16, "fill_empty": True, "seed": 0}
    assert set(stage.arrays()) == {"owners", "simhash", "projection", "final_index", "final_sign"}
    assert PooledStage(8, n_vectors=2).params()["n_vectors"] == 2
    with pytest.raises(ValueError, match="unknown first stage 'plaid'"):
        make_first_stage("plaid", 8)
    docs = TokenVectors.from_arrays([np.ones((2, 8), np.float32)] * 3)
    with pytest.raises(ValueError, match="indexes 0 documents"):
        LateInteractionSearch(docs, stage)


# -- token pooling --------------------------------------------------------------------------------

def test_clusters_are_colpali_engines_ward_on_the_distance_rows():
    """colpali-engine hands scipy the (n, n) cosine-distance matrix as observations; the same
    tree is built here from n x dim features."""
    rng = np.random.default_rng(12)
    for n, dim in ((40, 16), (90, 32), (7, 16)):
        tokens = _unit(rng.standard_normal((n, dim)))
        for n_clusters in (1, 3, n // 2):
            expected = fcluster(linkage(1 - tokens @ tokens.T, method="ward", metric="euclidean"),
                                t=n_clusters, criterion="maxclust") - 1
            np.testing.assert_array_equal(cluster_tokens(tokens, n_clusters), expected)


def test_token_pooling_reduces_counts_by_the_factor_and_keeps_scores_close():
    docs, queries = _pages(13, n_docs=120)
    stored = TokenVectors.from_arrays(docs, Float32Encoding(64))
    exact = maxsim(queries, stored)
    # measured: mean relative score change 0.104 / 0.219 and top-10 overlap 0.90 / 0.90 for factors 2 / 4
    # (noisy tokens: cosine ~0.8 to their centre, so the pooled means lose some of each peak)
    for factor, max_mean_rel, min_overlap in ((2, 0.13, 0.85), (4, 0.26, 0.85)):
        pooled = pool_documents(stored, factor)
        np.testing.assert_array_equal(pooled.lengths, np.maximum(stored.lengths // factor, 1))
        assert pooled.codes.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(pooled.codes, axis=1), 1.0, rtol=1e-5)
        scores = maxsim(queries, pooled)
        relative = np.abs(scores - exact) / np.abs(exact)
        assert relative.mean() <= max_mean_rel, (factor, relative.mean())
        assert _overlap(np.argsort(-exact, 1)[:, :10], np.argsort(-scores, 1)[:, :10]) >= min_overlap
    np.testing.assert_array_equal(pool_tokens(docs[0], 1), docs[0])
    assert pool_tokens(docs[0][:3], 4).shape == (1, 64)
    with pytest.raises(ValueError, match="pool_factor"):
        pool_tokens(docs[0], 0)
