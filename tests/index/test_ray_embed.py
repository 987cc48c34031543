"""The embed step on Ray: 2 actors over a small corpus give the single-process index exactly
(same ids, same vectors), and a worker that dies mid-run is restarted without loss or duplicates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hashing
from umr.index import Index

N_ITEMS = 300


def _corpus(folder: Path) -> Path:
    folder.mkdir()
    for i in range(N_ITEMS):
        (folder / f"doc{i:03d}.txt").write_text(f"item{i} about {'otters' if i % 3 else 'herons'} and pond {i % 11}")
    return folder


def _vectors(index: Index) -> dict[str, np.ndarray]:
    """Every stored vector, read back exactly: its scores against the unit vectors."""
    vectors: dict[str, np.ndarray] = {}
    basis = np.eye(hashing.DIM, dtype=np.float32)
    for j, hits in enumerate(index.search_vectors(basis, k=N_ITEMS, method="exact")):
        for hit in hits:
            vectors.setdefault(hit.id, np.zeros(hashing.DIM, np.float32))[j] = hit.score
    return vectors


@pytest.mark.slow
def test_two_ray_workers_index_like_one_process_and_survive_a_dying_worker(tmp_path, ray_session):
    from umr.index.ray_embed import RayEmbedder

    corpus = _corpus(tmp_path / "corpus")
    with Index.create(tmp_path / "local", hashing.HashEmbedder()) as local:
        local.index_corpus(corpus, commit_every=40)
        want = _vectors(local)
    assert len(want) == N_ITEMS

    for case in ("ray", "dying"):
        if case == "dying":  # the first worker to embed exits: Ray restarts it, its chunk runs again
            ray_session.unlink()
        with RayEmbedder(hashing.HashEmbedder, workers=2) as embedder, \
                Index.create(tmp_path / case, hashing.HashEmbedder()) as index:
            summary = index.index_corpus(corpus, commit_every=40, batch_size=16, embedder=embedder)
            assert (summary.added, summary.updated, len(summary.errors)) == (N_ITEMS, 0, 0)
            got = _vectors(index)
            ids = index.ids()
        assert len(ids) == len(set(ids)) == N_ITEMS and set(got) == set(want)
        for item_id, vector in want.items():
            np.testing.assert_array_equal(got[item_id], vector)
        assert ray_session.exists()  # armed for "dying": a worker did die


@pytest.mark.slow
@pytest.mark.dtype_sensitive  # minilm in the driver and in the workers: both must default alike
def test_umr_index_with_ray_matches_the_single_process_command(tmp_path, ray_session, capsys):
    from umr.cli import main

    corpus = tmp_path / "notes"
    corpus.mkdir()
    for i in range(24):
        (corpus / f"n{i:02d}.txt").write_text(f"note {i}: {'a heron waits by the pond' if i % 2 else 'otters play in a river'}")
    common = ["--model", "minilm", "--no-progress", "--commit-every", "8"]
    assert main(["index", str(corpus), "--index", str(tmp_path / "one"), *common]) == 0
    assert main(["index", str(corpus), "--index", str(tmp_path / "ray"), *common, "--ray", "--workers", "2"]) == 0
    assert "added 24, updated 0, unchanged 0" in capsys.readouterr().out
    # a rerun on Ray finds everything stored
    assert main(["index", str(corpus), "--index", str(tmp_path / "ray"), "--no-progress", "--ray"]) == 0
    assert "added 0, updated 0, unchanged 24" in capsys.readouterr().out
    with Index.open(tmp_path / "one") as one, Index.open(tmp_path / "ray") as ray:
        assert sorted(one.ids()) == sorted(ray.ids()) and len(ray) == 24
        for query in ("heron by a pond", "otters in the river", "note 7"):
            want, got = one.search(query, k=24), ray.search(query, k=24)
            np.testing.assert_allclose(sorted(h.score for h in got), sorted(h.score for h in want), atol=1e-5)


@pytest.mark.slow
@pytest.mark.dtype_sensitive  # minilm in the driver and in the workers: both must default alike
def test_umr_embed_with_ray_writes_the_single_process_matrix(tmp_path, ray_session, capsys):
    import json

    from umr.cli import main

    items = tmp_path / "items.jsonl"
    lines = [{"id": f"q{i}", "text": f"question {i} about {'herons' if i % 2 else 'otters'}", "is_query": i % 3 == 0}
             for i in range(300)]
    lines[5] = {"id": "bad", "image": str(tmp_path / "missing.png")}
    items.write_text("".join(json.dumps(line) + "\n" for line in lines))
    common = ["embed", "--input", str(items), "--model", "minilm", "--no-progress", "--on-error", "skip"]
    assert main([*common, "--output", str(tmp_path / "one.npy")]) == 0
    assert main([*common, "--output", str(tmp_path / "ray.npy"), "--ray", "--workers", "2"]) == 0
    one, ray = np.load(tmp_path / "one.npy"), np.load(tmp_path / "ray.npy")
    assert one.shape == ray.shape == (299, 384)
    np.testing.assert_allclose(ray, one, atol=1e-5)
    assert (tmp_path / "ray.ids.json").read_text() == (tmp_path / "one.ids.json").read_text()
    assert (tmp_path / "ray.errors.jsonl").read_text() == (tmp_path / "one.errors.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.dtype_sensitive  # minilm in the driver and in the workers: both must default alike
def test_a_killed_ray_driver_resumes_with_every_item_exactly_once(tmp_path, ray_session, capsys):
    """``umr index --ray`` SIGKILLed after its first commits, then run again on the same cluster,
    ends like an uninterrupted single-process run: what the killed run stored is kept as it is,
    the rest is added, nothing twice."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import ray

    from umr.cli import main

    corpus = tmp_path / "notes"
    corpus.mkdir()
    for i in range(N_ITEMS):
        (corpus / f"n{i:03d}.txt").write_text(f"note {i}: {'a heron waits by pond' if i % 2 else 'otters in river'} {i % 13}")
    common = ["--model", "minilm", "--no-progress", "--commit-every", "10"]
    assert main(["index", str(corpus), "--index", str(tmp_path / "one"), *common]) == 0

    index = tmp_path / "ray"
    address = ray.get_runtime_context().gcs_address  # the session's cluster: the driver joins it
    ray_args = ["--ray", "--workers", "2", "--ray-address", address]
    log = tmp_path / "driver.log"
    with log.open("wb") as sink:  # a file, not a pipe nobody reads while it runs
        driver = subprocess.Popen([sys.executable, "-m", "umr", "index", str(corpus), "--index", str(index), *common,
                                   *ray_args, "--batch-size", "4"],
                                  env=dict(os.environ, HF_HUB_OFFLINE="1"), stdout=sink, stderr=subprocess.STDOUT)

    def committed() -> int:  # rows of the index's manifest, read as the driver writes it
        try:
            return sum(segment["rows"] for segment in json.loads((index / "manifest.json").read_text())["segments"])
        except (OSError, ValueError, KeyError):
            return 0

    try:
        deadline = time.monotonic() + 240
        while driver.poll() is None and committed() < 30 and time.monotonic() < deadline:
            time.sleep(0.02)  # a few commits landed, most of the corpus is still to do
        assert driver.poll() is None, log.read_text()[-2000:]
    finally:  # killed here, or whatever went wrong: never left holding the cluster's CPUs
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    with Index.open(index) as partial:
        stored = len(partial)
        kept = {hit.id: hit.score for hit in partial.search("heron by a pond", k=stored)}
    assert 30 <= stored < N_ITEMS, (stored, log.read_text()[-2000:])
    # Ray kills a dead driver's actors; the rerun's two need their CPUs back
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ray.available_resources().get("CPU", 0) >= 2, ray.available_resources()

    capsys.readouterr()
    assert main(["index", str(corpus), "--index", str(index), "--no-progress", *ray_args]) == 0
    assert f"added {N_ITEMS - stored}, updated 0, unchanged {stored}" in capsys.readouterr().out
    with Index.open(tmp_path / "one") as one, Index.open(index) as resumed:
        ids = resumed.ids()
        assert len(ids) == len(set(ids)) == len(resumed) == N_ITEMS and sorted(ids) == sorted(one.ids())
        for query in ("heron by a pond", "otters in the river", "note 7"):
            want, got = one.search(query, k=N_ITEMS), resumed.search(query, k=N_ITEMS)
            np.testing.assert_allclose(sorted(h.score for h in got), sorted(h.score for h in want), atol=1e-5)
        again = {hit.id: hit.score for hit in resumed.search("heron by a pond", k=N_ITEMS)}
    assert all(abs(again[item_id] - score) < 1e-6 for item_id, score in kept.items())


@pytest.mark.slow
@pytest.mark.dtype_sensitive  # minilm in the driver and in the workers: both must default alike
def test_ray_workers_follow_the_drivers_cpu_switch(ray_session, monkeypatch):
    """The switch set in the driver after the cluster started (as on a cluster started elsewhere,
    whose workers never had the driver's environment): the workers' model defaults as the
    driver's does, not as the cluster's environment says."""
    from functools import partial

    import umr
    from umr.index.ray_embed import RayEmbedder
    from umr.core.devices import bf16_by_default

    items = [umr.Item.candidate(f"note {i}: a heron waits by the pond {i % 5}", id=str(i)) for i in range(12)]
    inherited = "1" if bf16_by_default() else "0"  # what the session's workers were started with
    driver = "0" if inherited == "1" else "1"
    monkeypatch.setenv("UMR_CPU_BF16", driver)
    want = umr.load_model("minilm").embed(items).vectors
    with RayEmbedder(partial(umr.load_model, "minilm"), workers=1) as embedder:
        (result,) = embedder.map([items])
    np.testing.assert_allclose(result.vectors, want, atol=1e-6)
    monkeypatch.setenv("UMR_CPU_BF16", inherited)  # the other setting gives other vectors: the check can fail
    assert np.abs(umr.load_model("minilm").embed(items).vectors - want).max() > 1e-4
