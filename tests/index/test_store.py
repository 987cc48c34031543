"""The stores themselves: the VectorStore contract, names that are not UTF-8, appending commits."""

from __future__ import annotations

import json
import os
from collections import Counter

import numpy as np
import pytest

import hashing
from umr.index import FlatStore, Index
from umr.index.base import VectorStore, json_line
from umr.core.items import Item

#: what os.fsdecode makes of the Latin-1 name b"caf\xe9.txt"
LATIN1 = os.fsdecode(b"caf\xe9.txt")


def test_both_stores_implement_the_protocol(make_index):
    index = make_index()
    assert isinstance(index.store, VectorStore)


def test_json_line_round_trips_lone_surrogates_as_valid_utf8():
    value = {"id": LATIN1, "text": "naïve 日本 😀", "meta": {"folder": "d\udcff"}}
    line = json_line(value)
    line.encode("utf-8")  # no UnicodeEncodeError
    assert "\\udce9" in line and "naïve 日本 😀" in line  # other text stays as itself
    assert json.loads(line) == value


def test_names_that_are_not_utf8_commit_and_read_back_equal(make_index):
    """A Latin-1 file name crashed the commit with UnicodeEncodeError (15.1), on every rerun."""
    index = make_index()
    items = [Item.candidate(text="a note about cafés", id=LATIN1, folder="d\udcff", file=LATIN1),
             Item.candidate(text="another note", id="plain.txt", folder="d")]
    summary = index.add(items)
    assert (summary.added, summary.errors) == (2, [])
    assert sorted(index.ids()) == sorted([LATIN1, "plain.txt"])
    record = index.get([LATIN1])[0]
    assert record["id"] == LATIN1 and record["meta"] == {"folder": "d\udcff", "file": LATIN1}
    hit = index.search("a note about cafés", k=1)[0]
    assert hit.id == LATIN1 and hit.meta["file"] == LATIN1
    assert [r.id for r in index.search("cafés", k=5, where={"folder": "d\udcff"})] == [LATIN1]
    assert index.store.hashes()[LATIN1] == record["hash"]
    again = index.add(items)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    assert index.delete([LATIN1]) == 1 and index.ids() == ["plain.txt"]


def test_names_that_are_not_utf8_survive_reopening(tmp_path):
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder())
    index.add([Item.candidate(text="café", id=LATIN1, file=LATIN1)])
    index.close()
    with Index.open(tmp_path / "ix") as reopened:
        assert reopened.ids() == [LATIN1]
        assert reopened.get([LATIN1])[0]["meta"]["file"] == LATIN1
    for path in (tmp_path / "ix").glob("seg-*"):
        if path.suffix in (".jsonl", ".keys"):
            path.read_bytes().decode("utf-8")  # the files stay valid UTF-8


def test_milvus_refuses_the_reserved_id_mark_per_item(tmp_path):
    pytest.importorskip("milvus_lite")
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder(), backend="milvus", uri=str(tmp_path / "m.db"))
    summary = index.add([Item.candidate(text="x", id="\U0010fffeodd"), Item.candidate(text="y", id="fine")])
    assert summary.added == 1 and index.ids() == ["fine"]
    assert "reserved" in summary.errors[0]["error"]
    index.close()


def _records(start: int, stop: int) -> list[dict]:
    return [{"id": f"r{i}", "hash": f"h{i}", "modality": "text", "meta": {"i": i}} for i in range(start, stop)]


def test_commits_append_to_the_searchable_copy(tmp_path):
    """Commits after a search extend what it searches; reopening gives the same answers."""
    rng = np.random.default_rng(0)
    dim = 16
    vectors = rng.standard_normal((600, dim)).astype(np.float32)
    store = FlatStore.create(tmp_path / "s", dim=dim, config={"model": {"name": "r", "dim": dim}})
    store.commit(_records(0, 200), vectors[:200])
    assert store.search(vectors[5], 1)[0][0].id == "r5"  # builds FAISS's copy
    for start in range(200, 600, 100):
        store.commit(_records(start, start + 100), vectors[start:start + 100])
    store.commit(_records(7, 8), -vectors[7:8])  # replaces r7
    queries = vectors[[3, 250, 599, 7]]
    before = [[(h.id, round(h.score, 5)) for h in row] for row in store.search(queries, 5)]
    assert [row[0][0] for row in before[:3]] == ["r3", "r250", "r599"]
    assert "r7" not in {i for i, _ in before[3]}
    assert len(store) == 600 and store.rows == 601
    store.close()
    reopened = FlatStore.open(tmp_path / "s")
    assert [[(h.id, round(h.score, 5)) for h in row] for row in reopened.search(queries, 5)] == before
    brute = queries @ np.concatenate([vectors[:7], -vectors[7:8], vectors[8:]]).T
    assert [[i for i, _ in row] for row in before] == [[f"r{i}" for i in np.argsort(-b, kind="stable")[:5]]
                                                        for b in brute]


def test_a_reader_whose_files_were_compacted_away_reloads(tmp_path):
    """A compaction removes the files a reader opened: its next read loads the new snapshot."""
    rng = np.random.default_rng(1)
    dim = 8
    vectors = rng.standard_normal((50, dim)).astype(np.float32)
    writer = FlatStore.create(tmp_path / "s", dim=dim, config={"model": {"name": "r", "dim": dim}})
    for start in range(0, 50, 10):
        writer.commit(_records(start, start + 10), vectors[start:start + 10])
    writer.delete([f"r{i}" for i in range(10)])
    reader = FlatStore.open(tmp_path / "s")
    writer.compact()
    assert len(list((tmp_path / "s").glob("seg-*.npy"))) == 1
    assert reader.get(["r44"])[0]["meta"] == {"i": 44}
    assert reader.search(vectors[44], 1)[0][0].id == "r44"
    assert len(reader) == 40 and reader.rows == 40  # the compacted snapshot
    writer.close()


def test_many_segments_hold_no_open_files(tmp_path):
    """An index of thousands of commits must not hold a file descriptor per segment."""
    dim = 4
    store = FlatStore.create(tmp_path / "s", dim=dim, config={"model": {"name": "r", "dim": dim}})
    for start in range(0, 600, 2):
        store.commit(_records(start, start + 2), np.ones((2, dim), np.float32))
    store.close()
    before = len(os.listdir("/proc/self/fd"))
    reader = FlatStore.open(tmp_path / "s")
    assert len(reader.search(np.ones(dim, np.float32), 5)[0]) == 5 and len(reader.ids()) == 600
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_hnsw_graph_searches_the_store_vectors(tmp_path):
    """The graph file holds no vectors of its own (one copy in memory); it still answers."""
    rng = np.random.default_rng(2)
    dim = 128
    vectors = rng.standard_normal((3000, dim)).astype(np.float32)
    store = FlatStore.create(tmp_path / "h", dim=dim, config={"model": {"name": "r", "dim": dim}, "method": "hnsw"})
    store.commit(_records(0, 2000), vectors[:2000])
    store.build_hnsw(m=16, ef_construction=64)
    store.commit(_records(2000, 3000), vectors[2000:])
    store.build_hnsw(m=16, ef_construction=64)  # extends the graph
    graph_file = tmp_path / "h" / store.manifest["hnsw"]["file"]
    assert graph_file.stat().st_size < vectors.nbytes / 2  # the links only (~40 int32 per row)
    store.close()
    reopened = FlatStore.open(tmp_path / "h")
    hits = reopened.search(vectors[[10, 2500]], 1, ef_search=64)
    assert [row[0].id for row in hits] == ["r10", "r2500"]
    assert reopened.hnsw_graph().ntotal == 3000


def test_a_graph_file_with_its_own_vectors_still_opens(tmp_path):
    """HNSW files written before the graph shared the store's vectors carry a copy; they load."""
    import faiss

    rng = np.random.default_rng(3)
    dim = 16
    vectors = rng.standard_normal((1500, dim)).astype(np.float32)
    store = FlatStore.create(tmp_path / "h", dim=dim, config={"model": {"name": "r", "dim": dim}, "method": "hnsw"})
    store.commit(_records(0, 1500), vectors)
    store.build_hnsw(m=16, ef_construction=64)
    old = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
    old.add(vectors)
    faiss.write_index(old, str(tmp_path / "h" / store.manifest["hnsw"]["file"]))  # with storage
    store.close()
    reopened = FlatStore.open(tmp_path / "h")
    queries = vectors[[3, 1400]]
    _, want = old.search(queries, 5, params=faiss.SearchParametersHNSW(efSearch=64))
    got = reopened.search(queries, 5, ef_search=64)
    assert [[h.id for h in row] for row in got] == [[f"r{i}" for i in row] for row in want]


def test_modality_counts_follow_adds_overwrites_deletes_and_reopening(make_index, tmp_path):
    """/v1/stats reads these counts on every page load: the store keeps them, no scan per call."""
    from PIL import Image

    paths = []
    for i in range(3):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (8, 8), (40 * i, 90, 200)).save(path)
        paths.append(str(path))
    index = make_index(hashing.PixelHashEmbedder())
    assert index.modality_counts() == {}
    index.add([Item.candidate(text=f"note {i}", id=f"t{i}") for i in range(4)]
              + [Item.candidate(image=p, id=f"i{n}") for n, p in enumerate(paths)])
    assert index.modality_counts() == {"text": 4, "image": 3}
    # an overwrite that changes the modality moves the item from one count to the other
    index.add([Item.candidate(image=paths[0], text="now a captioned picture", id="t0"),
               Item.candidate(text="a caption instead", id="i2")])
    assert index.modality_counts() == {"text": 4, "image": 2, "image,text": 1}
    assert index.delete(["t1", "i0", "missing"]) == 2
    assert index.modality_counts() == {"text": 3, "image": 1, "image,text": 1}
    index.add([Item.candidate(text="note 3", id="t3")])  # unchanged: no commit, same counts
    assert index.modality_counts() == {"text": 3, "image": 1, "image,text": 1}
    want = {"text": 3, "image": 1, "image,text": 1}
    assert sum(want.values()) == len(index)
    from umr.index import Index

    folder = index.folder
    index.close()
    with Index.open(folder, model=hashing.PixelHashEmbedder()) as reopened:
        assert reopened.modality_counts() == want
        assert dict(Counter(r["modality"] for r in reopened.get(reopened.ids()))) == want


def test_flat_store_counts_a_commit_made_after_the_first_count(tmp_path):
    """Counts built on first use stay current through later commits, deletes and a compaction."""
    dim = 4
    store = FlatStore.create(tmp_path / "s", dim=dim, config={"model": {"name": "r", "dim": dim}})
    records = [{"id": f"r{i}", "hash": "h", "modality": "text" if i % 2 else "image", "meta": {}} for i in range(6)]
    store.commit(records, np.ones((6, dim), np.float32))
    assert store.modality_counts() == {"text": 3, "image": 3}
    store.commit([{**records[0], "modality": "text"}], np.ones((1, dim), np.float32), delete_ids=["r1", "r2"])
    assert store.modality_counts() == {"text": 3, "image": 1}
    store.compact()
    assert store.modality_counts() == {"text": 3, "image": 1}
    store.delete(["r0", "r3", "r4", "r5"])
    assert store.modality_counts() == {}
    store.close()


def test_the_store_package_exports_what_store_py_exported():
    """umr.index.store is a package now (issue 22): every name the module exported imports from
    it, as the same object."""
    import umr.index
    import umr.index.store as store
    from umr.index import base
    from umr.index.store.flat import FlatStore as facade

    assert sorted(store.__all__) == ["FORMAT", "Filter", "FlatStore", "Hit", "IndexLocked", "IndexStoreError",
                                     "MANIFEST", "read_manifest"]
    assert store.FlatStore is facade is umr.index.FlatStore
    for name in ["FORMAT", "MANIFEST", "Filter", "Hit", "IndexLocked", "IndexStoreError", "read_manifest"]:
        assert getattr(store, name) is getattr(base, name), name
