"""Quantised storage wired into the embedded index (``quantize="int8"|"binary"``, ``umr index
--quantize``): the compact codes in memory and float32 rows on disk, exact and HNSW search with
rescoring, filters, deletes, compaction (int8 re-fitted), reopening, ``--dim``, the options
recorded and refused, and Milvus's refusal. The bar (minilm vectors, top-10 overlap with the
float32 index) is the slow test at the end; crash safety is in test_resume.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hashing
import umr
from sentences import sentences
from umr.cli import main
from umr.core.items import Item
from umr.index import FlatStore, Index

WORDS = ("river mountain city garden engine violin harbour winter copper lantern meadow falcon orchard canyon "
         "signal thunder pepper marble ribbon glacier otter pebble comet willow").split()


def items(n: int, seed: int = 0) -> list[Item]:
    rng = np.random.default_rng(seed)
    return [Item.candidate(text=" ".join(rng.choice(WORDS, 6)), id=f"d{i}",
                           part=i % 3, tags=["odd"] if i % 2 else []) for i in range(n)]


def ranked(results) -> list[tuple[str, float]]:
    return [(r.id, round(r.score, 5)) for r in results]


def same_ranking(got, want) -> bool:
    """Equal scores, and equal ids above the last score (the hash-test model ties often, and ties
    at the cut may be broken either way)."""
    got, want = ranked(got), ranked(want)
    if [s for _, s in got] != [s for _, s in want]:
        return False
    cut = want[-1][1] if want else 0
    return {i for i, s in got if s > cut} == {i for i, s in want if s > cut}


def clustered(n: int, dim: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((60, dim)).astype(np.float32)
    x = centers[rng.integers(0, 60, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def overlap(a, b) -> float:
    return float(np.mean([len({h.record["id"] for h in x} & {h.record["id"] for h in y}) / len(y)
                          for x, y in zip(a, b)]))


def records(start: int, stop: int) -> list[dict]:
    return [{"id": str(i), "hash": str(i), "modality": "text", "meta": {"even": i % 2 == 0}} for i in range(start, stop)]


@pytest.fixture
def float_and_quantised(tmp_path):
    """A float32 index and an ``int8`` / ``binary`` one of the same 150 hash-test items."""
    def make(kind: str, **options):
        built = []
        for name, quantize in (("f32", None), (kind, kind)):
            index = Index.create(tmp_path / name, hashing.HashEmbedder(), quantize=quantize,
                                 **(options if quantize else {}))
            index.add(items(150))
            built.append(index)
        return built

    return make


# -- the store --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_memory_holds_the_codes_and_the_disk_the_float_rows(kind, tmp_path):
    x = clustered(3000, 128)
    queries = x[:50] + 0.05 * clustered(50, 128, seed=2)
    exact = FlatStore.create(tmp_path / "f32", dim=128, config={})
    store = FlatStore.create(tmp_path / kind, dim=128, config={"quantize": kind})
    for start in range(0, 3000, 500):  # commits, as indexing makes them
        exact.commit(records(start, start + 500), x[start:start + 500])
        store.commit(records(start, start + 500), x[start:start + 500])
    truth = exact.search(queries, 10)
    found = store.search(queries, 10)
    assert overlap(found, truth) >= 0.95
    for got, want in zip(found, truth):  # rescored: the float scores themselves
        scores = {h.record["id"]: h.score for h in want}
        assert all(abs(h.score - scores[h.record["id"]]) < 1e-5 for h in got if h.record["id"] in scores)
    assert not list((tmp_path / kind).glob("*.npy"))  # no float segment files: one float file for all rows
    named = store.manifest["compact"]
    assert named["floats"] == "vectors-000001.f32"  # appended to by every commit
    assert (tmp_path / kind / named["floats"]).stat().st_size == 3000 * 128 * 4
    assert (tmp_path / kind / named["codes"]).stat().st_size == 3000 * (128 if kind == "int8" else 16)
    compact = store._searcher.compact(store._state)
    assert compact.memory_bytes == 3000 * (128 if kind == "int8" else 16) and compact.index.ntotal == 3000
    assert isinstance(compact.floats(), np.memmap)  # read on demand, never loaded whole
    assert store.manifest["config"]["quantize"] == kind and store.manifest["compact"]["kind"] == kind
    if kind == "binary":  # the sign bits alone rank poorly: rescoring is what keeps the top 10
        assert overlap(store.search(queries, 10, rescore_k=0), truth) < overlap(found, truth)
    exact.close()
    store.close()


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_hnsw_over_the_codes_with_a_tail_filters_and_reopening(kind, tmp_path):
    x = clustered(5000, 64)
    queries = x[::100] + 0.05 * clustered(50, 64, seed=3)
    store = FlatStore.create(tmp_path / kind, dim=64, config={"quantize": kind, "method": "hnsw"})
    store.commit(records(0, 4000), x[:4000])
    store.build_hnsw(m=16, ef_construction=80)
    store.commit(records(4000, 5000), x[4000:])  # searched exactly beside the graph
    store.close()
    store = FlatStore.open(tmp_path / kind)
    assert store.manifest["hnsw"]["rows"] == 4000 and store.manifest["hnsw"]["storage"] == "codes"
    exact = store.search(queries, 10, method="exact")
    walked = store.search(queries, 10)
    assert overlap(walked, exact) >= 0.95
    assert any(int(h.record["id"]) >= 4000 for row in walked for h in row)
    from umr.index.base import Filter

    even = Filter.make(where={"even": True})
    filtered = store.search(queries, 10, filter=even)
    assert all(int(h.record["id"]) % 2 == 0 for row in filtered for h in row) and all(len(r) == 10 for r in filtered)
    assert overlap(filtered, store.search(queries, 10, filter=even, method="exact")) >= 0.95
    graph = store._searcher.compact(store._state).graph(store.manifest["hnsw"]["file"], 4000)
    assert graph.index.storage.ntotal == 5000  # the graph searches the one copy of the codes
    store.close()


def test_int8_refits_when_later_rows_fall_outside_the_calibration(tmp_path):
    rng = np.random.default_rng(4)
    small = rng.uniform(-0.05, 0.05, (100, 16)).astype(np.float32)
    wide = rng.uniform(-1, 1, (200, 16)).astype(np.float32)
    store = FlatStore.create(tmp_path / "q", dim=16, config={"quantize": "int8"})
    store.commit(records(0, 100), small)
    store.search(small[:2], 3)  # the codes are in memory before the re-fit
    store.commit(records(100, 300), wide)
    compact = store.manifest["compact"]
    assert compact["codec"]["rows"] == 300 and compact["codes"] == "codes-000002.u8" and compact["clipped"] == 0
    hits = store.search(wide[:5], 1, rescore_k=0)  # the codes' own ranking, after the re-fit
    assert [h[0].record["id"] for h in hits] == [str(i) for i in range(100, 105)]
    store.close()
    assert (tmp_path / "q" / "codes-000001.u8").exists()  # kept a while for readers of the older manifest
    FlatStore.open(tmp_path / "q", writable=True).close()
    assert not (tmp_path / "q" / "codes-000001.u8").exists()


# -- the index --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_filters_deletes_and_updates_answer_as_the_float_index(kind, float_and_quantised):
    exact, quantised = float_and_quantised(kind)
    for index in (exact, quantised):  # fewer rows than the rescoring depth: every row is rescored exactly
        index.delete([f"d{i}" for i in range(0, 150, 4)])
        index.add([Item.candidate(text="otter comet willow", id="d1", part=9, tags=[])])
    for query in [dict(text="otter comet"), dict(text="river signal", where={"part": 1}),
                  dict(text="pebble", where={"tags": "odd"}), dict(text="comet", where={"part": 9})]:
        want = exact.search(**query, k=8)
        assert same_ranking(quantised.search(**query, k=8), want) and want
    assert ranked(quantised.search("otter comet", k=1)) == [("d1", ranked(exact.search("otter comet", k=1))[0][1])]
    assert "d4" not in {r.id for r in quantised.search("river", k=150)}
    assert len(quantised) == len(exact) == 150 - 38


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_compaction_keeps_results_and_refits_int8_on_the_live_rows(kind, float_and_quantised, tmp_path):
    exact, quantised = float_and_quantised(kind)
    quantised.add([Item.candidate(text=f"lantern meadow {i}", id=f"e{i}") for i in range(30)])
    exact.add([Item.candidate(text=f"lantern meadow {i}", id=f"e{i}") for i in range(30)])
    for index in (exact, quantised):
        index.delete([f"d{i}" for i in range(50)])
    before = exact.search("lantern meadow falcon", k=10)
    assert same_ranking(quantised.search("lantern meadow falcon", k=10), before)
    quantised.compact()
    compact = quantised.store.manifest["compact"]
    assert quantised.store.rows == 130 and len(quantised) == 130
    if kind == "int8":
        assert compact["codec"]["rows"] == 130  # re-fitted on the rows kept
    files = sorted(p.name for p in (tmp_path / kind).iterdir() if p.name.startswith(("vectors-", "codes-")))
    assert files == sorted([compact["floats"], compact["codes"]])  # the old files are gone
    assert same_ranking(quantised.search("lantern meadow falcon", k=10), before)
    quantised.close()
    with Index.open(tmp_path / kind) as reopened:
        assert same_ranking(reopened.search("lantern meadow falcon", k=10), before)


def test_reopen_honours_quantize_and_the_recorded_rescore_depth(tmp_path):
    index = Index.create(tmp_path / "b", hashing.HashEmbedder(), quantize="binary", rescore_k=5)
    index.add(items(120))
    index.close()
    with Index.open(tmp_path / "b") as index:
        assert index.config["quantize"] == "binary" and index.config["rescore_k"] == 5
        assert index.store.quantize == "binary"
        codes_only = index.search("river city", k=5, rescore_k=0)
        assert all(float(r.score).is_integer() for r in codes_only) and codes_only[0].score > 1  # 64 - 2 x Hamming
        rescored = index.search("river city", k=5)  # the recorded depth: 5 candidates rescored
        assert [r.id for r in rescored] == sorted([r.id for r in codes_only], key=[r.id for r in rescored].index)
        assert all(r.score <= 1 + 1e-5 for r in rescored)  # inner products of unit vectors
        with pytest.raises(ValueError, match="rescore_k must be a whole number"):
            index.search("river", rescore_k=-1)
    with Index.create(tmp_path / "f", hashing.HashEmbedder()) as flat:
        flat.add(items(5))
        with pytest.raises(ValueError, match="rescore_k is for a quantised index"):
            flat.search("river", rescore_k=10)
    with pytest.raises(ValueError, match="quantize must be one of int8, binary"):
        Index.create(tmp_path / "x", hashing.HashEmbedder(), quantize="int4")
    with pytest.raises(ValueError, match="rescore_k is for a quantised index"):
        Index.create(tmp_path / "y", hashing.HashEmbedder(), rescore_k=10)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_matryoshka_truncation_combines_with_quantize(kind, tmp_path):
    model = umr.load_model("hash-test", dim=32)
    with Index.create(tmp_path / "q", model, quantize=kind) as quantised, \
            Index.create(tmp_path / "f", umr.load_model("hash-test", dim=32)) as exact:
        quantised.add(items(100))
        exact.add(items(100))
        assert quantised.store.dim == 32
        compact = quantised.store.manifest["compact"]
        size = (tmp_path / "q" / compact["codes"]).stat().st_size
        assert size == 100 * (32 if kind == "int8" else 4)  # codes of the truncated vectors
        assert same_ranking(quantised.search("river garden", k=5), exact.search("river garden", k=5))


def test_milvus_refuses_quantize_in_one_line(tmp_path, capsys):
    with pytest.raises(ValueError, match="--quantize int8 is for the faiss backend"):
        Index.create(tmp_path / "m", hashing.HashEmbedder(), backend="milvus", quantize="int8")
    assert not (tmp_path / "m").exists()
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("river garden")
    code = main(["index", str(corpus), "--index", str(tmp_path / "m2"), "--model", "hash-test", "--no-progress",
                 "--backend", "milvus", "--quantize", "binary"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--quantize binary is for the faiss backend" in err[0]


def test_a_late_interaction_model_is_pointed_to_token_storage(tmp_path):
    from umr.testing import write_tiny_colqwen

    model = umr.load_model(write_tiny_colqwen(tmp_path / "adapter", "2.5", seed=0))
    with pytest.raises(ValueError, match="compacted by token_storage"):
        Index.create(tmp_path / "ix", model, quantize="int8")


# -- the command line -------------------------------------------------------------------------------


def test_cli_quantize_is_recorded_searched_and_a_different_one_refused(tmp_path, capsys):
    corpus = tmp_path / "c"
    corpus.mkdir()
    for i, item in enumerate(items(40)):
        (corpus / f"doc{i:02d}.txt").write_text(item.text)
    index = tmp_path / "ix"
    args = ["index", str(corpus), "--index", str(index), "--model", "hash-test", "--no-progress"]
    assert main(args + ["--quantize", "int8", "--method", "hnsw"]) == 0
    assert "(faiss, hnsw, int8)" in capsys.readouterr().err
    assert json.loads((index / "manifest.json").read_text())["config"]["quantize"] == "int8"

    assert main(args + ["--quantize", "binary"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--quantize binary (it stores int8 vectors)" in err[0], err
    assert main(args + ["--quantize", "int8", "--rescore-k", "30"]) == 0  # the same: fine; a new default depth
    out = capsys.readouterr().out
    assert "unchanged 40" in out and "rescore 30 candidates by default" in out
    assert json.loads((index / "manifest.json").read_text())["config"]["rescore_k"] == 30

    flat = tmp_path / "flat"
    assert main(["index", str(corpus), "--index", str(flat), "--model", "hash-test", "--no-progress"]) == 0
    capsys.readouterr()

    def search(folder, *extra):
        assert main(["search", "--index", str(folder), "river garden", "--json", "-k", "5", *extra]) == 0
        return [(r["id"], round(r["score"], 5)) for r in json.loads(capsys.readouterr().out)]

    want = search(flat)
    every_row = search(index, "--rescore-k", "40", "--exact")  # all 40 rows rescored: the float32 answer
    assert [s for _, s in every_row] == [s for _, s in want]
    codes_only = search(index, "--rescore-k", "0", "--exact")  # the decoded int8 rows' scores
    assert len(codes_only) == 5
    assert max(abs(a - b) for (_, a), (_, b) in zip(codes_only, want)) < 0.05
    assert main(["index", str(corpus), "--index", str(flat), "--no-progress", "--quantize", "int8"]) == 2
    assert "--quantize int8 (it stores float32 vectors)" in capsys.readouterr().err
    assert main(["search", "--index", str(flat), "river", "--rescore-k", "10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rescore_k is for a quantised index" in err[0]


# -- the bar: real minilm vectors -------------------------------------------------------------------


@pytest.mark.slow
def test_quantised_indexes_of_minilm_vectors_keep_the_float32_top10(tmp_path):
    """The issue's bar: ``int8`` and ``binary`` (rescored) indexes of 3,000 minilm vectors share at
    least 95% of each query's top 10 with the float32 index, over 50 queries, exact and HNSW."""
    texts = sentences(3050)  # the sentences test_compact.py embeds
    corpus = [Item.candidate(text=t, id=f"s{i}") for i, t in enumerate(texts[:3000])]
    queries = texts[3000:]
    model = umr.load_model("minilm")
    top = {}
    for kind in (None, "int8", "binary"):
        with Index.create(tmp_path / str(kind), model, quantize=kind, method="hnsw") as index:
            for start in range(0, len(corpus), 1000):  # three commits: int8 calibrates on the first
                index.add(corpus[start:start + 1000])
            index.store.build_hnsw(m=16, ef_construction=100)
            top[kind] = [[r.id for r in index.search(q, k=10, method="exact")] for q in queries]
            top[(kind, "hnsw")] = [[r.id for r in index.search(q, k=10)] for q in queries]
            if kind == "binary":
                top["bits alone"] = [[r.id for r in index.search(q, k=10, method="exact", rescore_k=0)]
                                     for q in queries]

    def shared(found, truth) -> float:
        return float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))

    for kind in ("int8", "binary"):  # measured: 1.000 for both, exact and HNSW
        assert shared(top[kind], top[None]) >= 0.95, kind
        assert shared(top[(kind, "hnsw")], top[None]) >= 0.95, kind
    assert shared(top["bits alone"], top[None]) < 0.9  # 0.766: the rescoring is what keeps the top 10
