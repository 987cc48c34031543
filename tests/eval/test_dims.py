"""Matryoshka sweeps (`umr eval --dims`): one full-dimension embedding, every dimension scored
from renormalised prefixes, equal to loading the model at that dimension; results apart per
dimension; refusals for what a sweep cannot mean."""

from __future__ import annotations

import json

import numpy as np
import pytest

import umr
from umr.cli import main
from umr.data.mbeir import load_mbeir
from umr.eval import Evaluator, evaluate
from umr.eval.cache import fingerprint
from umr.eval.trec import read_run
from umr.models.matryoshka import renormalised_prefix, sweep_dims
from umr.core.items import Item

DIMS = [4, 16, 32]  # the tiny Qwen3-VL is 32-dimensional


@pytest.fixture(scope="module")
def q3(tiny_qwen3vl_dir):
    return umr.load_model(tiny_qwen3vl_dir)


def _counting(model):
    """The model, recording the fingerprint of every item it embeds."""
    seen: list[str] = []
    forward = model._embed_batch

    def counted(items):
        seen.extend(fingerprint(item) for item in items)
        return forward(items)

    model._embed_batch = counted
    return model, seen


def _runs(folder, tasks):
    return {(t.pool, t.name): read_run(folder / "runs" / t.pool / f"{t.name}.trec") for t in tasks}


def test_a_prefix_renormalised_is_what_loading_at_that_dimension_gives(tiny_qwen3vl_dir, q3, mbeir_dir):
    items = [q for t in load_mbeir(mbeir_dir) for q in t.queries[:2]] + [Item.candidate(text="a red square")]
    full = q3.embed(items).vectors
    for dim in (1, 8, 31):
        want = umr.load_model(tiny_qwen3vl_dir, dim=dim).embed(items).vectors
        got = renormalised_prefix(full, dim)
        assert got.shape == want.shape == (len(items), dim)
        assert np.abs(got - want).max() <= 1e-6
    assert renormalised_prefix(full, 32) is full  # the full width: already unit vectors


def test_sweep_embeds_once_and_each_dimension_equals_a_run_at_that_dimension(tiny_qwen3vl_dir, mbeir_dir,
                                                                            tmp_path, capsys):
    tasks = load_mbeir(mbeir_dir)
    model, seen = _counting(umr.load_model(tiny_qwen3vl_dir))
    out = tmp_path / "sweep"
    sweep = Evaluator(model, output=out, dims=[32, 4, 16, 4]).evaluate(tasks, benchmark="mbeir")
    distinct = {fingerprint(item) for t in tasks for item in [*t.queries, *t.candidates]}
    assert sorted(seen) == sorted(distinct)  # every item once, at the full dimension
    assert sweep["dims"] == DIMS and set(sweep["folders"].values()) == {"dim-4", "dim-16", "dim-32"}

    for dim in DIMS:  # the same scores and runs as evaluating the model loaded at that dimension
        alone = Evaluator(umr.load_model(tiny_qwen3vl_dir, dim=dim), output=tmp_path / f"alone-{dim}")
        scores = alone.evaluate(tasks, benchmark="mbeir")
        on_disk = json.loads((out / f"dim-{dim}" / "scores.json").read_text())
        assert on_disk["dim"] == dim and len(on_disk["tasks"]) == len(tasks)
        for mine, theirs in zip(on_disk["tasks"], scores["tasks"]):
            assert mine["task"] == theirs["task"]
            assert mine["metrics"] == pytest.approx(theirs["metrics"], abs=1e-9)
            assert sweep_row(sweep, mine)["main_score"][str(dim)] == mine["main_score"]
        got, want = _runs(out / f"dim-{dim}", tasks), _runs(tmp_path / f"alone-{dim}", tasks)
        for key in want:
            for qid, ranked in want[key].items():
                assert set(got[key][qid]) == set(ranked)
                np.testing.assert_allclose([got[key][qid][d] for d in ranked], list(ranked.values()), atol=1e-5)
        assert (out / f"dim-{dim}" / "results.md").is_file() and (out / f"dim-{dim}" / "report.html").is_file()
    table = (out / "dims.md").read_text()
    assert "| Task | Pool | Metric | dim 4 | dim 16 | dim 32 |" in table
    assert json.loads((out / "dims.json").read_text())["dims"] == DIMS
    mean = sweep["averages"]["local"]["main_score"]
    assert set(mean) == {"4", "16", "32"} and all(0 <= v <= 1 for v in mean.values())

    # finished: a rerun skips every dimension of every task and embeds nothing
    seen.clear()
    Evaluator(model, output=out, dims=DIMS, log=print).evaluate(tasks, benchmark="mbeir")
    assert not seen and capsys.readouterr().out.count("already done, skipped") == len(DIMS) * len(tasks)
    # a run without a sweep into the same folder reuses the cached full vectors and writes apart
    plain = Evaluator(model, output=out).evaluate(tasks, benchmark="mbeir")
    assert not seen and "dim" not in plain
    assert [r["metrics"] for r in plain["tasks"]] == \
        [r["metrics"] for r in json.loads((out / "dim-32" / "scores.json").read_text())["tasks"]]
    assert (out / "runs").is_dir() and (out / "scores.json").is_file()
    assert json.loads((out / "dim-4" / "scores.json").read_text())["dim"] == 4  # not overwritten


def sweep_row(sweep, result):
    return next(r for r in sweep["tasks"] if (r["pool"], r["task"]) == (result["pool"], result["task"]))


def test_what_a_sweep_refuses(q3, oracle, mbeir_dir):
    with pytest.raises(ValueError, match=r"dimension\(s\) 33, 64 out of range.*32-dimensional"):
        sweep_dims(q3, [8, 33, 64])
    with pytest.raises(ValueError, match="not a Matryoshka model"):
        evaluate(oracle, load_mbeir(mbeir_dir), dims=[4])
    with pytest.raises(ValueError, match="whole numbers, not 2.5"):
        sweep_dims(q3, [8, 2.5])
    with pytest.raises(ValueError, match="at least one"):
        sweep_dims(q3, [])
    assert sweep_dims(q3, [32, 8, 8]) == [8, 32]
    with pytest.raises(ValueError, match="evaluate_dims"):
        Evaluator(q3, dims=[8]).evaluate_task(load_mbeir(mbeir_dir)[0])


def _cli(*args) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:  # argparse refuses a malformed value itself
        return int(exc.code)


def test_cli_sweep_and_its_one_line_refusals(tiny_qwen3vl_dir, mbeir_dir, tmp_path, capsys):
    common = ["eval", "--benchmark", "mbeir", "--data", str(mbeir_dir), "--no-progress"]
    out = tmp_path / "out"
    assert _cli(*common, "--model", str(tiny_qwen3vl_dir), "--dims", "8,32", "--output", str(out)) == 0
    printed = capsys.readouterr().out
    assert "mean headline by dimension: dim 8 " in printed and "dims.md" in printed
    assert (out / "dim-8" / "scores.json").is_file() and (out / "dim-32" / "runs").is_dir()

    q3 = ["--model", str(tiny_qwen3vl_dir)]
    for extra, message in (([*q3, "--dims", "8,abc"], "expected whole numbers separated by commas, got 'abc'"),
                           ([*q3, "--dims", "8,0"], "at least 1, got 0"),
                           ([*q3, "--dims", "8,64"], "64 out of range"),
                           ([*q3, "--dims", "8", "--dim", "16"], "leave out --dim"),
                           (["--model", "minilm", "--dims", "64"], "not a Matryoshka model")):
        assert _cli(*common, *extra, "--output", str(tmp_path / "refused")) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
