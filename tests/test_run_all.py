"""benchmarks/run_all.py on fake benchmarks (no real benchmark runs): each runs as a subprocess
with --quick passed through, a failing one is reported with its error while the rest go on, a
script that writes nothing is not credited with an old file, and headline numbers and targets
are read from each result JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("run_all", None)


def _script(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text("import json, sys\nquick = '--quick' in sys.argv\n" + body)
    return path


def _fakes(run_all, folder: Path, results: Path):
    at, Headline, Check, Benchmark = run_all.at, run_all.Headline, run_all.Check, run_all.Benchmark
    write = f"open({str(results)!r} + '/' + ('fast.quick.json' if quick else 'fast.json'), 'w')"
    return [
        Benchmark("fast", "a fast thing", "a slow thing", ("fast.json", "fast.quick.json"),
                  (Headline("fast vs slow", at("speed", "ratio"), 2.0),
                   Headline("rows", at("rows", -1, "n"), unit="")),
                  (Check("same output", at("same")),),
                  script=_script(folder, "fast", f"json.dump({{'speed': {{'ratio': 2.5 if quick else 1.5}}, "
                                                 f"'rows': [{{'n': 1}}, {{'n': 7}}], 'same': True}}, {write})\n")),
        Benchmark("broken", "crashes", "none", ("broken.json", "broken.json"),
                  (Headline("ratio", at("ratio"), 1.0),),
                  script=_script(folder, "broken", "print('started')\nraise SystemExit('boom: no such model')\n")),
        Benchmark("silent", "exits 0 without writing", "none", ("silent.json", "silent.json"),
                  (Headline("ratio", at("ratio"), 1.0),), script=_script(folder, "silent", "pass\n")),
        Benchmark("changed", "its JSON lost a key", "none", ("changed.json", "changed.json"),
                  (Headline("ratio", at("ratio"), 1.0, at_least=False), Headline("other", at("gone", "x"), 1.0)),
                  script=_script(folder, "changed", f"json.dump({{'ratio': 0.5}}, open({str(results / 'changed.json')!r}, 'w'))\n")),
    ]


def test_run_all_collects_every_result_and_reports_the_failures(run_all, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "silent.json").write_text(json.dumps({"ratio": 9.0}))  # an old run's file
    old = os.stat(results / "silent.json").st_mtime - 3600
    os.utime(results / "silent.json", (old, old))
    benches = _fakes(run_all, tmp_path, results)

    doc = run_all.run_all(benches, quick=True, results=results, log=lambda _: None)
    by = {e["name"]: e for e in doc["benchmarks"]}
    assert list(by) == ["fast", "broken", "silent", "changed"]  # the failure did not stop the rest
    fast = by["fast"]
    assert (fast["status"], fast["exit_status"], fast["passed"]) == ("ok", 0, True)
    assert fast["result_file"] == "fast.quick.json" and fast["command"].endswith("fast.py --quick")
    assert fast["headlines"] == [
        {"label": "fast vs slow", "value": 2.5, "unit": "x", "target": ">= 2x", "passed": True},
        {"label": "rows", "value": 7, "unit": "", "target": None, "passed": None}]
    assert fast["checks"] == [{"label": "same output", "passed": True}]
    assert fast["what"] == "a fast thing" and fast["baseline"] == "a slow thing" and fast["duration_s"] >= 0

    broken = by["broken"]
    assert broken["status"] == "failed" and broken["exit_status"] == 1 and broken["passed"] is False
    assert "boom: no such model" in broken["error"] and "started" in broken["error"]
    assert by["silent"]["status"] == "no result" and by["silent"]["headlines"] == []  # the old 9.0 is not credited
    changed = by["changed"]
    assert changed["status"] == "ok" and changed["passed"] is None  # one number missing: not judged
    assert [h["value"] for h in changed["headlines"]] == [0.5, None]
    assert changed["headlines"][0]["passed"] is True

    assert doc["failed"] == ["broken", "silent"] and doc["targets_missed"] == []
    assert doc["quick"] is True and doc["machine"]["cpus"] == os.cpu_count() and "amx_bf16" in doc["machine"]
    assert json.loads((results / "all.quick.json").read_text())["benchmarks"] == doc["benchmarks"]
    assert not (results / "all.json").exists()

    full = run_all.run_all(benches[:1], quick=False, results=results, log=lambda _: None)
    assert full["benchmarks"][0]["headlines"][0]["passed"] is False and full["targets_missed"] == ["fast"]
    table = run_all.table(full)
    assert "| fast | ok |" in table and "| fast vs slow | 1.5x | >= 2x NOT met |" in table

    collected = run_all.run_all(benches, quick=False, results=results, run=False)  # runs nothing
    assert [e["status"] for e in collected["benchmarks"]] == ["collected", "no result", "collected", "collected"]
    assert collected["benchmarks"][2]["headlines"][0]["value"] == 9.0  # the file as it is


def test_every_listed_benchmark_exists_and_names_its_results(run_all):
    names = [b.name for b in run_all.BENCHMARKS]
    assert len(names) == len(set(names))
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - {"run_all", "machine"}
    assert set(names) == scripts  # a new benchmark must be added to run_all
    for bench in run_all.BENCHMARKS:
        assert bench.headlines and all(name.endswith(".json") for name in bench.result)


def test_headlines_read_the_committed_results(run_all):
    """The getters match the result files the scripts write today (a renamed key shows as missing)."""
    for bench in run_all.BENCHMARKS:
        entry = run_all.collect(bench, quick=False)
        if entry["status"] != "collected":
            continue
        missing = [h["label"] for h in entry["headlines"] if h["value"] is None]
        assert not missing, f"{bench.name}: {missing} not in {bench.result[0]}"
