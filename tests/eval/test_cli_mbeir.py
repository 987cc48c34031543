"""``umr eval --benchmark mbeir`` through the command line, on the M-BEIR-layout fixture.

minilm is a text model: it embeds the text candidates and text queries, and reports the image
items it cannot embed instead of stopping; the point here is the CLI path (both pools, the
instruction policy, the files), the oracle tests cover the scores.
"""

from __future__ import annotations

import json

from umr.cli import main


def test_cli_mbeir_both_pools(mbeir_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    code = main(["eval", "--model", "minilm", "--benchmark", "mbeir", "--data", str(mbeir_dir),
                 "--pool", "both", "--tasks", "mscoco_task0", "oven_task6", "--instructions", "first",
                 "--output", str(out), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[local] 2 task(s)" in printed and "[global] 2 task(s)" in printed
    scores = json.loads((out / "scores.json").read_text())
    assert {(r["task"], r["pool"]) for r in scores["tasks"]} == {
        ("mscoco_task0", "local"), ("oven_task6", "local"), ("mscoco_task0", "global"), ("oven_task6", "global")}
    coco = next(r for r in scores["tasks"] if r["task"] == "mscoco_task0" and r["pool"] == "global")
    assert coco["metadata"]["instruction_policy"] == "first" and coco["candidate_errors"] == 20
    for pool in ("local", "global"):
        for name in ("mscoco_task0.trec", "mscoco_task0.uniir.trec", "oven_task6.trec"):
            assert (out / "runs" / pool / name).is_file()
    assert (out / "results.md").read_text().count("mscoco_task0") >= 3
