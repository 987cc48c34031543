"""`umr eval --ray`: the evaluator's embedding on Ray workers gives the single-process
evaluation (same vectors, runs and scores, the same item errors), every item embedded exactly
once, also when a worker dies mid-run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from umr.cli import main
from umr.data.beir import load_beir_task
from umr.data.mbeir import load_mbeir
from umr.eval import EvalConfig, Evaluator
from umr.eval.trec import read_run

sys.path.insert(0, str(Path(__file__).parents[1] / "index"))
import hashing  # noqa: E402 - the hash-test model Ray workers import (tests/index is on their path)

STDLIB_DOCS = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"


def _cached(folder: Path) -> dict[str, np.ndarray]:
    """The evaluation cache under ``folder``: fingerprint -> vector, each fingerprint checked to
    be stored once."""
    (store,) = [d for d in (folder / "cache").iterdir() if (d / "fps.txt").is_file()]
    fps = (store / "fps.txt").read_text().split()
    assert len(fps) == len(set(fps)), "an item was stored twice"
    dim = json.loads((store / "meta.json").read_text())["dim"]
    vectors = np.fromfile(store / "vectors.f32", dtype=np.float32).reshape(len(fps), dim)
    return dict(zip(fps, vectors))


def _trec_files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted((folder / "runs").rglob("*.trec"))}


@pytest.mark.slow
def test_evaluator_on_ray_workers_equals_one_process_and_survives_a_dying_worker(tmp_path, ray_session,
                                                                                mbeir_dir):
    from umr.index.ray_embed import RayEmbedder

    # the hash model refuses images: M-BEIR's image items become per-item errors on both paths
    tasks = [load_beir_task(STDLIB_DOCS), *load_mbeir(mbeir_dir)]
    config = EvalConfig(batch_size=8)  # chunks of 32 items: many in flight over the 2 workers
    local = Evaluator(hashing.HashEmbedder(), output=tmp_path / "local", config=config).evaluate(tasks)

    ray_session.unlink()  # armed: the first worker to embed dies, Ray restarts it, its chunk runs again
    with RayEmbedder(hashing.HashEmbedder, workers=2) as embedder:
        on_ray = Evaluator(hashing.HashEmbedder(), output=tmp_path / "ray", config=config,
                           embedder=embedder).evaluate(tasks)
    assert ray_session.exists()  # a worker did die

    want, got = _cached(tmp_path / "local"), _cached(tmp_path / "ray")
    assert set(got) == set(want) and len(want) == len({*want})
    for fp, vector in want.items():
        np.testing.assert_array_equal(got[fp], vector)
    assert _trec_files(tmp_path / "ray") == _trec_files(tmp_path / "local")
    for mine, theirs in zip(on_ray["tasks"], local["tasks"]):
        assert mine["metrics"] == theirs["metrics"] and mine["failures"] == theirs["failures"]
        assert mine["query_errors"] == theirs["query_errors"]
    failed = {r["task"]: r["failures"]["queries"] + r["failures"]["candidates"] for r in on_ray["tasks"]}
    assert failed["stdlib-docs"] == 0 and failed["mscoco_task0"] == 10  # its 10 image candidates


@pytest.mark.slow
@pytest.mark.dtype_sensitive  # minilm in the driver and in the workers: both must default alike
def test_umr_eval_with_ray_matches_the_single_process_command(tmp_path, ray_session, capsys, monkeypatch):
    from umr.cli import eval as cli_eval

    common = ["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(STDLIB_DOCS), "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "one")]) == 0

    def not_here(*args, **kwargs):
        raise AssertionError("the driver loaded the model: with --ray only the workers do")

    monkeypatch.setattr(cli_eval, "load_model_from_args", not_here)
    assert main([*common, "--output", str(tmp_path / "ray"), "--ray", "--workers", "2"]) == 0
    capsys.readouterr()
    one, ray = (json.loads((tmp_path / side / "scores.json").read_text())["tasks"][0] for side in ("one", "ray"))
    assert ray["metrics"] == pytest.approx(one["metrics"], abs=1e-6)
    want, got = _cached(tmp_path / "one"), _cached(tmp_path / "ray")
    assert set(got) == set(want) and len(want) == 245  # 195 documents + 50 queries, each once
    np.testing.assert_allclose(np.stack([got[fp] for fp in want]), np.stack(list(want.values())), atol=1e-5)
    run_one = read_run(tmp_path / "one" / "runs" / "corpus" / "stdlib-docs.trec")
    run_ray = read_run(tmp_path / "ray" / "runs" / "corpus" / "stdlib-docs.trec")
    assert run_ray.keys() == run_one.keys()
    for qid, ranked in run_one.items():
        assert set(run_ray[qid]) == set(ranked)
        np.testing.assert_allclose([run_ray[qid][d] for d in ranked], list(ranked.values()), atol=1e-5)
    # finished: a rerun on Ray re-reports without embedding, or starting any worker
    def no_workers(*args, **kwargs):
        raise AssertionError("Ray workers were started with nothing left to embed")

    monkeypatch.setattr("umr.index.ray_embed.RayEmbedder", no_workers)
    assert main([*common, "--output", str(tmp_path / "ray"), "--ray"]) == 0
    assert "already done, skipped" in capsys.readouterr().err
