"""End to end on the M-BEIR-layout fixture: oracle recall, modality bias, files, resume, compare."""

from __future__ import annotations

import base64
import json
import re

import pytest

from umr.data.mbeir import load_mbeir
from umr.eval import EvalConfig, Evaluator, evaluate
from umr.eval.metrics import evaluate_run, mean_metrics
from umr.eval.report import compare, load_scores
from umr.eval.trec import read_qrels, read_run

TASK_NAMES = ["mscoco_task0", "oven_task6", "nights_task4"]


def tasks_for(mbeir_dir, pools=("local", "global")):
    return [t for pool in pools for t in load_mbeir(mbeir_dir, pool=pool)]


def test_oracle_scores_recall_one_on_local_and_global(mbeir_dir, oracle, tmp_path):
    scores = evaluate(oracle, tasks_for(mbeir_dir), output=tmp_path / "out", benchmark="mbeir")
    assert {(r["task"], r["pool"]) for r in scores["tasks"]} == {(n, p) for n in TASK_NAMES
                                                                 for p in ("local", "global")}
    for r in scores["tasks"]:
        assert r["main_metric"] == "hit@5"
        assert r["metrics"]["hit@1"] == 1.0 and r["main_score"] == 1.0, r["task"]
        assert r["metrics"]["ndcg@10"] == pytest.approx(1.0)
        if r["pool"] == "local":  # a local pool holds only the target modality
            assert r["modality_bias"]["bias"] == 0.0
    cats = {r["task"]: r["category"] for r in scores["tasks"]}
    assert cats == {"mscoco_task0": "T→I", "oven_task6": "IT→T", "nights_task4": "I→I"}


def test_text_loving_embedder_shows_modality_bias_on_global_pool(mbeir_dir, text_lover):
    scores = evaluate(text_lover, tasks_for(mbeir_dir), benchmark="mbeir")
    bias = {(r["task"], r["pool"]): r["modality_bias"]["bias"] for r in scores["tasks"]}
    # image targets: the global pool offers texts, which this embedder prefers
    assert bias[("mscoco_task0", "global")] >= 0.95
    assert bias[("nights_task4", "global")] >= 0.95
    # local pools hold only the target modality; the text task has no wrong modality to prefer
    assert bias[("mscoco_task0", "local")] == 0.0
    assert bias[("oven_task6", "global")] == 0.0
    by = {(r["task"], r["pool"]): r["main_score"] for r in scores["tasks"]}
    assert by[("mscoco_task0", "global")] < by[("mscoco_task0", "local")]


def test_output_files_runs_reports_and_rescoring(mbeir_dir, oracle, tmp_path):
    out = tmp_path / "out"
    scores = evaluate(oracle, tasks_for(mbeir_dir), output=out, benchmark="mbeir")
    on_disk = json.loads((out / "scores.json").read_text())
    assert on_disk["tasks"][0]["metrics"] == scores["tasks"][0]["metrics"]
    # TREC run re-scored from disk equals the reported scores
    run = read_run(out / "runs/global/mscoco_task0.trec")
    qrels, task_ids = read_qrels(mbeir_dir / "qrels/test/mbeir_mscoco_task0_test_qrels.txt")
    assert set(task_ids.values()) == {"0"}
    again = mean_metrics(evaluate_run(run, qrels, k_values=(1, 5, 10)))
    reported = next(r for r in scores["tasks"] if r["task"] == "mscoco_task0" and r["pool"] == "global")
    assert again["hit@5"] == reported["metrics"]["hit@5"]
    assert again["ndcg@10"] == pytest.approx(reported["metrics"]["ndcg@10"], abs=1e-12)
    # UniIR's 7-column variant carries the task id; ranks are 1..n per query
    lines = (out / "runs/global/mscoco_task0.uniir.trec").read_text().splitlines()
    first = lines[0].split()
    assert len(first) == 7 and first[1] == "Q0" and first[3] == "1" and first[6] == "0"
    assert len(lines[0].split()) == 7
    # Markdown in the papers' layout, HTML self-contained with PNG charts
    md = (out / "results.md").read_text()
    assert "| 0. mscoco_task0 | T→I | MSCOCO | R@5 | 100.00 | 100.00 |" in md
    assert "## Modality bias" in md and "fused-modal" in md
    page = (out / "report.html").read_text()
    pngs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(pngs) >= 3
    assert base64.b64decode(pngs[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page


def test_resume_after_interruption_embeds_only_what_is_missing(mbeir_dir, oracle, tmp_path):
    OracleEmbedder = type(oracle)

    class Interrupted(Exception):
        pass

    class Flaky(OracleEmbedder):
        budget = 25

        def _embed_batch(self, items):
            if self.calls + len(items) > self.budget:
                raise Interrupted
            return super()._embed_batch(items)

    tasks = tasks_for(mbeir_dir, pools=("global",))
    config = EvalConfig(commit_every=8, batch_size=4)
    flaky = Flaky()
    with pytest.raises(Interrupted):
        Evaluator(flaky, output=tmp_path / "out", config=config).evaluate(tasks, benchmark="mbeir")
    assert 0 < flaky.calls <= 25

    fresh = OracleEmbedder()
    scores = Evaluator(fresh, output=tmp_path / "out", config=config).evaluate(tasks, benchmark="mbeir")
    n_items = 30 + 18  # the union pool + every query
    assert fresh.calls == n_items - (flaky.calls // 8) * 8  # finished chunks were kept
    assert all(r["main_score"] == 1.0 for r in scores["tasks"])

    # a third run has nothing left to do: tasks are skipped, nothing is embedded
    third = OracleEmbedder()
    again = Evaluator(third, output=tmp_path / "out", config=config).evaluate(tasks, benchmark="mbeir")
    assert third.calls == 0
    assert [r["metrics"] for r in again["tasks"]] == [r["metrics"] for r in scores["tasks"]]


def test_compare_prints_per_task_deltas(mbeir_dir, oracle, text_lover, tmp_path):
    evaluate(oracle, tasks_for(mbeir_dir, ("global",)), output=tmp_path / "a", benchmark="mbeir")
    evaluate(text_lover, tasks_for(mbeir_dir, ("global",)), output=tmp_path / "b", benchmark="mbeir")
    table = compare(load_scores(tmp_path / "a"), load_scores(tmp_path / "b"))
    row = next(l for l in table.splitlines() if l.startswith("| mscoco_task0 | global | R@5"))
    assert row.split("|")[4].strip() == "100.00"
    assert float(row.split("|")[6]) < 0
    assert "Mean Δ" in table


def test_instructions_are_picked_like_uniir_and_seeded(mbeir_dir):
    a = {q.id: q.instruction for t in load_mbeir(mbeir_dir, seed=0) for q in t.queries}
    b = {q.id: q.instruction for t in load_mbeir(mbeir_dir, seed=0) for q in t.queries}
    c = {q.id: q.instruction for t in load_mbeir(mbeir_dir, seed=1) for q in t.queries}
    assert a == b and a != c
    prompts = {"Find the image for this text.", "Retrieve a matching image."}
    coco = [q for t in load_mbeir(mbeir_dir, tasks=["mscoco_task0"]) for q in t.queries]
    assert {q.instruction for q in coco} <= prompts  # UniIR's format_string: capitalised, final period
    first = load_mbeir(mbeir_dir, tasks=["mscoco_task0"], instruction_policy="first")[0]
    assert {q.instruction for q in first.queries} == {"Find the image for this text."}
    bare = load_mbeir(mbeir_dir, tasks=["mscoco_task0"], instruction_policy="none")[0]
    assert all(q.instruction is None for q in bare.queries)


def test_items_a_model_cannot_embed_are_reported_not_fatal(mbeir_dir, oracle, tmp_path):
    from umr.core.items import ItemError

    class TextOnly(type(oracle)):
        name = "text-only"

        def _cost(self, item):
            if item.image is not None:
                raise ItemError(item.id, "cannot embed an image")
            return 1

    scores = evaluate(TextOnly(), tasks_for(mbeir_dir, ("local",)), output=tmp_path / "out", benchmark="mbeir")
    by = {r["task"]: r for r in scores["tasks"]}
    # t->i: every candidate is an image -> an empty pool, every query scores 0
    assert by["mscoco_task0"]["candidate_errors"] == 10 and by["mscoco_task0"]["main_score"] == 0.0
    # it->t: the fused queries cannot be embedded; they are listed and score 0
    assert len(by["oven_task6"]["query_errors"]) == 6 and by["oven_task6"]["main_score"] == 0.0
    assert (tmp_path / "out/report.html").is_file()


def test_in_memory_images_are_cached_by_content(oracle):
    from PIL import Image

    from umr.eval.cache import fingerprint
    from umr.core.items import Item

    a = Item.candidate(text="concept 01", image=Image.new("RGB", (2, 2), "red"))
    b = Item.candidate(text="concept 01", image=Image.new("RGB", (2, 2), "red"))
    c = Item.candidate(text="concept 01", image=Image.new("RGB", (2, 2), "blue"))
    assert fingerprint(a) == fingerprint(b) != fingerprint(c)
    assert fingerprint(Item.query(text="x")) != fingerprint(Item.candidate(text="x"))


def test_a_changed_task_is_evaluated_again_not_skipped(mbeir_dir, oracle, tmp_path):
    [task] = load_mbeir(mbeir_dir, tasks=["mscoco_task0"])
    evaluate(oracle, [task], output=tmp_path / "out")
    task.candidates = [c for c in task.candidates if c.id != "1:1000"]  # drop query 1:0's positive
    again = evaluate(type(oracle)(), [task], output=tmp_path / "out")
    assert again["tasks"][0]["n_candidates"] == 9
    assert again["tasks"][0]["metrics"]["hit@5"] == pytest.approx(5 / 6)
