"""What only a Milvus server does (HNSW parameters, consistency after a write, modality filters
on it) and a server killed in the middle of ``umr index``: the run ends with one line naming the
server (no traceback), a search against the stopped server likewise, and the rerun loses and
duplicates nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

import hashing
from conftest import HASHING_CLI
from umr.index import Index, StoreUnreachable
from umr.core.items import Item


def _collection():
    return f"t{uuid.uuid4().hex}"


def test_server_collection_has_hnsw_parameters_strong_reads_and_modality_filters(tmp_path, milvus_server):
    from pymilvus import MilvusClient

    name = _collection()
    index = Index.create(tmp_path / "ix", hashing.PixelHashEmbedder(), backend="milvus", uri=milvus_server.uri,
                         collection=name, method="hnsw", hnsw_m=12, ef_construction=60)
    client = MilvusClient(milvus_server.uri)
    try:
        described = client.describe_index(name, "vector")
        assert (described["index_type"], described["M"], described["efConstruction"]) == ("HNSW", "12", "60")
        collection = client.describe_collection(name)
        assert collection["consistency_level_name"] == "Strong"

        # read-your-writes: each commit is seen at once, by this index and by another client
        from PIL import Image

        pictures = [Image.new("RGB", (8, 8), (200, 30 + 60 * step, 30)) for step in range(3)]
        for step in range(3):
            index.add([Item.candidate(text=f"otters at dusk {step}", id=f"t{step}"),
                       Item.candidate(image=pictures[step], id=f"i{step}")])
            assert len(index) == 2 * (step + 1)
            with Index.open(tmp_path / "ix") as reader:
                assert {h.id for h in reader.search(f"otters at dusk {step}", k=10)} >= {f"t{step}", f"i{step}"}
            count = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
            assert count[0]["count(*)"] == 2 * (step + 1)
        # a search filtered by modality finds every upserted item of it; an item whose modality
        # changes is still stored once
        assert {h.id for h in index.search("otters", k=10, modality="image")} == {"i0", "i1", "i2"}
        index.add([Item.candidate(image=pictures[0], id="t0")])
        assert len(index) == 6 and sorted(index.ids()) == ["i0", "i1", "i2", "t0", "t1", "t2"]
        assert index.get(["t0"])[0]["modality"] == "image"
        # HNSW answers like exact search here, with the stored ef_search or a given one
        queries = hashing.PixelHashEmbedder().encode_queries(["otters at dusk 1", "herons"])
        for ef in (None, 16):
            approx = index.search_vectors(queries, k=4, ef_search=ef)
            exact = index.search_vectors(queries, k=4, method="exact")
            assert [[round(h.score, 4) for h in row] for row in approx] == \
                   [[round(h.score, 4) for h in row] for row in exact]
    finally:
        client.close()
        index.close()


N_ITEMS = 600


def _cmd(corpus, index, uri, collection):
    return [sys.executable, HASHING_CLI, "index", str(corpus), "--index", str(index), "--model", "hash-test",
            "--no-progress", "--commit-every", "20", "--backend", "milvus", "--uri", uri,
            "--collection", collection]


def _one_line_naming(stderr: str, uri: str, command: str) -> str:
    """The one line a lost server is (besides what the command said before it began), checked."""
    assert "Traceback" not in stderr and "pymilvus" not in stderr, stderr
    said = [line for line in stderr.splitlines()
            if line.strip() and not line.startswith((f"umr {command}: creating", f"umr {command}: updating"))]
    assert len(said) == 1, stderr
    assert said[0].startswith(f"umr {command}: error: ") and uri in said[0], said[0]
    assert "run the same command again" in said[0], said[0]
    return said[0]


def _count(uri, collection) -> int:
    from pymilvus import MilvusClient

    client = MilvusClient(uri)
    try:
        # created but not yet indexed by `umr index`: nothing can be stored in it yet
        if not client.has_collection(collection) or not client.list_indexes(collection):
            return 0
        client.load_collection(collection)  # a restarted server has released it
        rows = client.query(collection, filter="", output_fields=["count(*)"], consistency_level="Strong")
        return int(rows[0]["count(*)"])
    finally:
        client.close()


@pytest.mark.slow
def test_server_killed_mid_index_loses_and_duplicates_nothing_after_rerun(tmp_path, milvus_server):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(N_ITEMS):
        (corpus / f"doc{i:04d}.txt").write_text(f"item{i} about {'otters' if i % 3 else 'herons'} and pond {i % 17}\n")
    index, collection = tmp_path / "ix", _collection()
    env = dict(os.environ, UMR_TEST_EMBED_DELAY="0.01", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    run = subprocess.Popen(_cmd(corpus, index, milvus_server.uri, collection), env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while _count(milvus_server.uri, collection) < 100 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert run.poll() is None, "umr index finished before the server could be killed"
        milvus_server.kill()
        try:
            out, err = run.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            run.kill()
            out, err = run.communicate()
        assert run.returncode != 0, out  # the run cannot have finished without its server
        assert "stopped answering" in _one_line_naming(err, milvus_server.uri, "index")
        # a search against the stopped server: one line too, saying to start it
        search = subprocess.run([sys.executable, HASHING_CLI, "search", "item12 about otters", "--index", str(index)],
                                env=env, capture_output=True, text=True, timeout=180)
        assert search.returncode != 0 and search.stdout == ""
        assert "cannot connect to Milvus" in _one_line_naming(search.stderr, milvus_server.uri, "search")
    finally:
        if run.poll() is None:
            run.kill()
        if milvus_server.server is None:
            milvus_server.start()  # the same data and ports, as after a crash
    stored_at_kill = _count(milvus_server.uri, collection)
    assert 0 < stored_at_kill < N_ITEMS
    env["UMR_TEST_EMBED_DELAY"] = "0"
    rerun = subprocess.run(_cmd(corpus, index, milvus_server.uri, collection), env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"added {N_ITEMS - stored_at_kill}, updated 0, unchanged {stored_at_kill}" in rerun.stdout, rerun.stdout
    with Index.open(index) as ix:
        ids = ix.ids()
        assert len(ids) == len(set(ids)) == len(ix) == N_ITEMS
        assert sorted(ids) == sorted(f"corpus/doc{i:04d}.txt" for i in range(N_ITEMS))
        model = hashing.HashEmbedder()
        hit = ix.search("item123 about herons and pond 4", k=1)[0]
        want = model.encode_candidates(["item123 about herons and pond 4"])[0]
        assert hit.id == "corpus/doc0123.txt"
        np.testing.assert_allclose(hit.score, float(want @ model.encode_queries(["item123 about herons and pond 4"])[0]),
                                   atol=1e-5)


@pytest.mark.slow
def test_a_server_lost_after_the_index_is_open_is_one_error_naming_it(tmp_path, milvus_server):
    index = Index.create(tmp_path / "ix", hashing.HashEmbedder(), backend="milvus", uri=milvus_server.uri,
                         collection=_collection())
    try:
        index.add([Item.candidate(text=f"otters and herons {i}", id=f"d{i}") for i in range(5)])
        milvus_server.kill()
        for call in (lambda: index.search("otters", k=3), lambda: index.add([Item.candidate(text="x", id="x")]),
                     lambda: len(index)):
            with pytest.raises(StoreUnreachable, match=f"the Milvus server at {milvus_server.uri} stopped "
                                                       f"answering .*run the same command again"):
                call()
    finally:
        index.close()
        if milvus_server.server is None:
            milvus_server.start()
    with Index.open(tmp_path / "ix") as reopened:  # what was committed is there
        assert len(reopened) == 5 and reopened.search("otters and herons 3", k=1)[0].id == "d3"
