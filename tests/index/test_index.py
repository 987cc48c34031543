"""Index correctness on both backends: add, update, delete, filters, persistence, model check."""

from __future__ import annotations

import numpy as np
import pytest

import hashing
from umr.index import Index, ModelMismatch
from umr.core.items import Item


def _items(n, prefix="d"):
    return [Item.candidate(text=f"document {i} about {'cats' if i % 2 else 'dogs'} number{i}",
                           id=f"{prefix}{i}", group=i % 3) for i in range(n)]


def _brute(index_vectors, ids, query, k):
    scores = index_vectors @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], scores[order]


def test_add_search_matches_brute_force(make_index):
    index = make_index()
    items = _items(200)
    summary = index.add(items)
    assert (summary.added, summary.updated, len(summary.errors)) == (200, 0, 0)
    assert len(index) == 200
    model = hashing.HashEmbedder()
    vectors = model.encode_candidates([it.text for it in items])
    query = model.encode_queries(["cats number7"])[0]
    hits = index.search_vectors(query[None], k=20)[0]
    want_ids, want_scores = _brute(vectors, [it.id for it in items], query, 20)
    np.testing.assert_allclose([h.score for h in hits], want_scores, atol=1e-5)
    # equal scores may come in either order (and cut anywhere at k): each hit's score is its own
    by_id = dict(zip([it.id for it in items], vectors @ query))
    np.testing.assert_allclose([h.score for h in hits], [by_id[h.id] for h in hits], atol=1e-5)
    assert len({h.id for h in hits}) == 20
    top = index.search("cats number7", k=1)[0]
    best = {i for i, score in by_id.items() if score >= max(by_id.values()) - 1e-5}
    assert "d7" in best  # d109's words hash to the same score: a tie either backend may break
    texts = {it.id: it.text for it in items}
    assert top.id in best and top.rank == 1 and top.modality == "text" and top.text == texts[top.id]


def test_update_delete_and_unchanged(make_index):
    index = make_index()
    index.add(_items(10))
    again = index.add(_items(10))
    assert (again.added, again.updated, again.unchanged) == (0, 0, 10)
    changed = [Item.candidate(text="a totally new text about zebras", id="d3")]
    summary = index.add(changed)
    assert (summary.added, summary.updated) == (0, 1)
    assert len(index) == 10
    assert index.search("a totally new text about zebras", k=1)[0].id == "d3"
    assert index.get(["d3"])[0]["text"] == "a totally new text about zebras"
    assert index.delete(["d3", "d4", "missing"]) == 2
    assert len(index) == 8
    assert not {"d3", "d4"} & {r.id for r in index.search("zebras", k=10)}
    assert sorted(index.ids()) == sorted(f"d{i}" for i in range(10) if i not in (3, 4))


def test_filters_by_modality_and_metadata(make_index):
    index = make_index()
    index.add(_items(30))
    hits = index.search("cats", k=30, where={"group": 1})
    assert hits and all(h.meta["group"] == 1 for h in hits)
    assert len(hits) == 10
    hits = index.search("cats", k=30, where={"group": [0, 2]})
    assert len(hits) == 20 and all(h.meta["group"] in (0, 2) for h in hits)
    assert index.search("cats", k=5, modality="image") == []
    assert len(index.search("cats", k=5, modality="text")) == 5


def test_reopen_and_model_check(make_index, tmp_path):
    index = make_index()
    index.add(_items(20))
    before = [(r.id, round(r.score, 5)) for r in index.search("dogs number4", k=5)]
    folder = index.folder
    index.close()
    reopened = Index.open(folder)
    assert len(reopened) == 20
    assert [(r.id, round(r.score, 5)) for r in reopened.search("dogs number4", k=5)] == before
    recorded = reopened.config["model"]
    assert (recorded["name"], recorded["dim"], recorded["options"]) == ("hash-test", 64, {})
    assert recorded["identity"]["family"] == "HashEmbedder" and recorded["identity"]["files"] == ""
    reopened.close()
    with pytest.raises(ModelMismatch, match="built with hash-test.*not minilm.*dimension: 64 vs 384"):
        Index.open(folder, model="minilm")
    other = hashing.HashEmbedder(name="hash-other")
    with pytest.raises(ModelMismatch, match="vectors of different models cannot be compared"):
        Index.open(folder, model=other)


def test_exact_matches_numpy_on_100k_random_vectors(tmp_path):
    """The bar: same top-100 ids and scores (<= 1e-5) as brute-force numpy, 100k x 384."""
    from umr.index import FlatStore

    rng = np.random.default_rng(0)
    n, dim = 100_000, 384
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((20, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    store = FlatStore.create(tmp_path / "big", dim=dim, config={"model": {"name": "random", "dim": dim}})
    records = [{"id": str(i), "hash": "", "modality": "text", "meta": {}} for i in range(n)]
    for start in range(0, n, 25_000):  # several segments, as incremental indexing makes
        store.commit(records[start:start + 25_000], vectors[start:start + 25_000])
    store.close()
    store = FlatStore.open(tmp_path / "big")
    hits = store.search(queries, 100)
    brute = queries @ vectors.T
    for q, row in enumerate(hits):
        want = np.argsort(-brute[q], kind="stable")[:100]
        assert [h.id for h in row] == [str(i) for i in want]
        np.testing.assert_allclose([h.score for h in row], brute[q, want], atol=1e-5, rtol=0)


def test_hnsw_option_recall_and_tail(tmp_path):
    """HNSW finds nearly what exact finds; rows added after the graph was built are searched too."""
    from umr.index import FlatStore

    rng = np.random.default_rng(1)
    dim = 32
    centers = rng.standard_normal((50, dim)).astype(np.float32)
    vectors = centers[rng.integers(0, 50, 5000)] + 0.3 * rng.standard_normal((5000, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = FlatStore.create(tmp_path / "h", dim=dim, config={"model": {"name": "r", "dim": dim}, "method": "hnsw"})
    records = [{"id": str(i), "hash": "", "modality": "text", "meta": {}} for i in range(5000)]
    store.commit(records[:4000], vectors[:4000])
    store.build_hnsw(m=16, ef_construction=80)
    store.commit(records[4000:], vectors[4000:])
    store.close()
    store = FlatStore.open(tmp_path / "h")
    queries = vectors[rng.integers(0, 5000, 50)] + 0.05 * rng.standard_normal((50, dim)).astype(np.float32)
    approx = store.search(queries, 10)
    exact = store.search(queries, 10, method="exact")
    recall = np.mean([len({h.id for h in a} & {h.id for h in e}) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95
    assert any(int(h.id) >= 4000 for row in approx for h in row)


def test_reader_sees_consistent_snapshot_and_garbage_is_collected(tmp_path):
    from umr.index import FlatStore

    dim = 8
    store = FlatStore.create(tmp_path / "s", dim=dim, config={"model": {"name": "r", "dim": dim}})
    rng = np.random.default_rng(2)
    recs = lambda a, b: [{"id": str(i), "hash": "", "modality": "text", "meta": {}} for i in range(a, b)]
    store.commit(recs(0, 10), rng.standard_normal((10, dim)))
    reader = FlatStore.open(tmp_path / "s")
    store.commit(recs(10, 20), rng.standard_normal((10, dim)))
    assert len(reader) == 10  # a snapshot: the reader keeps what it opened
    assert len(FlatStore.open(tmp_path / "s")) == 20
    # a commit killed after writing its files but before the manifest swap leaves orphans
    (tmp_path / "s" / "seg-000099.npy").write_bytes(b"partial")
    (tmp_path / "s" / "manifest.json.tmp").write_text("{")
    store.close()
    store = FlatStore.open(tmp_path / "s", writable=True)
    assert not (tmp_path / "s" / "seg-000099.npy").exists()
    assert len(store) == 20
    from umr.index import IndexLocked

    with pytest.raises(IndexLocked, match="another process"):
        FlatStore.open(tmp_path / "s", writable=True)
    store.close()


def test_readers_during_commits_always_see_whole_commits(tmp_path):
    """Searches while indexing: every open sees a state after some whole commit, never half of one."""
    import threading

    from umr.index import FlatStore

    dim, per_commit, commits = 8, 7, 150
    store = FlatStore.create(tmp_path / "s", dim=dim, config={"model": {"name": "r", "dim": dim}})
    rng = np.random.default_rng(3)
    stop = threading.Event()

    def write():
        for c in range(commits):
            records = [{"id": f"{c}-{j}", "hash": "", "modality": "text", "meta": {}} for j in range(per_commit)]
            # every third commit also replaces an earlier item: a delete and an add in one commit
            if c % 3 == 2:
                records.append({"id": f"{c - 1}-0", "hash": "new", "modality": "text", "meta": {}})
            store.commit(records, rng.standard_normal((len(records), dim)))
        stop.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen = 0
    while not stop.is_set() or seen == 0:
        reader = FlatStore.open(tmp_path / "s")
        ids = reader.ids()
        assert len(ids) == len(set(ids))
        assert len(ids) % per_commit == 0  # replacements keep the count; adds come whole
        if ids:
            assert len(reader.search(rng.standard_normal(dim), 5)[0]) == 5
        seen += 1
    writer.join()
    store.close()
    assert len(FlatStore.open(tmp_path / "s")) == commits * per_commit


def test_hnsw_method_on_both_backends(make_index):
    """An index created with method="hnsw" answers like exact search on a small corpus."""
    index = make_index(method="hnsw")
    items = _items(300)
    index.add(items)
    if index.store.backend == "faiss":
        assert index.store.manifest["hnsw"]["rows"] == 300  # the graph was built and persisted
    model = hashing.HashEmbedder()
    queries = model.encode_queries([f"cats number{i}" for i in range(0, 300, 37)])
    approx = index.search_vectors(queries, k=5)
    exact = index.search_vectors(queries, k=5, method="exact")
    for a, e in zip(approx, exact):
        assert [round(r.score, 4) for r in a] == [round(r.score, 4) for r in e]


def test_compact_keeps_live_items(tmp_path):
    index = Index.create(tmp_path / "c", hashing.HashEmbedder())
    index.add(_items(50))
    index.add([Item.candidate(text="replaced text about otters", id="d1")])
    index.delete([f"d{i}" for i in range(10, 40)])
    before = [(r.id, round(r.score, 5)) for r in index.search("otters", k=5)]
    index.compact()
    assert len(index) == 20
    assert [(r.id, round(r.score, 5)) for r in index.search("otters", k=5)] == before
    index.close()
    reopened = Index.open(tmp_path / "c")
    assert len(reopened) == 20 and reopened.store.rows == 20  # the deleted rows are gone
    assert [(r.id, round(r.score, 5)) for r in reopened.search("otters", k=5)] == before
    reopened.close()
