"""The evaluator scores as BEIR and UniIR do, says what failed, retries what changed, resumes
from its last commit, holds one pool's vectors, and compares two runs task by task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from umr.cli import main
from umr.data.beir import load_beir_task
from umr.data.mbeir import load_mbeir
from umr.eval import EvalConfig, Evaluator, evaluate
from umr.eval.cache import EmbeddingStore
from umr.eval.trec import read_run
from umr.models.base import Embedder
from umr.core.items import Item

from .conftest import Words, cli_eval, word_items, write_beir

STDLIB_DOCS = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"
pytrec_eval = pytest.importorskip("pytrec_eval")


def pytrec_means(qrels, run) -> dict[str, float]:
    """pytrec_eval over the queries run (its own rule: queries both in the run and the qrels)."""
    per_query = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map", "recall.10", "recip_rank"}).evaluate(run)
    n = len(per_query)
    return {"ndcg@10": sum(m["ndcg_cut_10"] for m in per_query.values()) / n,
            "map": sum(m["map"] for m in per_query.values()) / n,
            "recall@10": sum(m["recall_10"] for m in per_query.values()) / n,
            "mrr": sum(m["recip_rank"] for m in per_query.values()) / n}


# -- BEIR means like BEIR (15.3) ----------------------------------------------------------------

def test_beir_qrels_for_an_absent_query_do_not_count_and_equal_pytrec_eval(tmp_path, monkeypatch, capsys):
    data = tmp_path / "stdlib-docs"
    shutil.copytree(STDLIB_DOCS, data)
    with (data / "qrels/test.tsv").open("a") as handle:
        handle.write("no-such-query\tsome-doc\t1\n")  # judged, but not in queries.jsonl
    out = tmp_path / "out"
    assert cli_eval(monkeypatch, Words(), data, out) == 0
    printed = capsys.readouterr().out
    [task] = json.loads((out / "scores.json").read_text())["tasks"]
    qrels = {}
    for line in (data / "qrels/test.tsv").read_text().splitlines()[1:]:
        qid, did, grade = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(grade)
    run = read_run(out / "runs/corpus/stdlib-docs.trec")
    assert len(run) == 50 and len(qrels) == 51
    reference = pytrec_means(qrels, run)
    for name, value in reference.items():
        assert task["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert reference["ndcg@10"] > 0.1
    assert task["n_scored_queries"] == 50 and task["dropped_queries"]["absent"] == 1
    assert "50 queries scored, dropped: 1 absent from the queries" in printed
    assert "dropped: 1 absent from the queries" in (out / "results.md").read_text()


def test_mbeir_keeps_uniir_means_every_query_of_the_file(mbeir_dir, oracle, tmp_path):
    root = tmp_path / "M-BEIR"
    shutil.copytree(mbeir_dir, root)
    qrels = root / "qrels/test/mbeir_mscoco_task0_test_qrels.txt"
    qrels.write_text(qrels.read_text() + "1:99 0 1:1000 1 0\n")  # a query the query file does not hold
    [task] = load_mbeir(root, tasks=["mscoco_task0"])
    task.candidates = [c for c in task.candidates if c.id != "1:1000"]  # query 1:0 now misses
    result = Evaluator(oracle).evaluate_task(task).result
    assert result.n_scored_queries == 6 and result.metrics["hit@5"] == pytest.approx(5 / 6)


# -- BEIR's ignore_identical_ids (8.7) -----------------------------------------------------------

def _argument_task(folder: Path, meta=None) -> Path:
    """ArguAna-like: every query is also a corpus document under the same id."""
    corpus = [{"_id": f"a{i}", "text": f"claim{i} topic{i // 2}"} for i in range(6)]
    queries = [{"_id": f"a{i}", "text": f"claim{i} topic{i // 2}"} for i in range(0, 6, 2)]
    qrels = [(f"a{i}", f"a{i + 1}", 1) for i in range(0, 6, 2)]  # the counter-argument
    return write_beir(folder, corpus, queries, qrels, meta)


def test_results_with_the_query_id_are_dropped_as_beir_does(tmp_path):
    task = load_beir_task(_argument_task(tmp_path / "arg"))
    assert task.ignore_identical_ids
    config = EvalConfig(depth=3)
    outcome = Evaluator(Words(), config=config).evaluate_task(task)
    for qid, scores in outcome.run.items():
        assert qid not in scores and len(scores) == 3  # searched one deeper: depth results remain
    qrels = {q: dict(j) for q, j in task.qrels.items()}
    assert outcome.result.metrics["ndcg@10"] == pytest.approx(pytrec_means(qrels, outcome.run)["ndcg@10"], abs=1e-9)
    # the query finding itself would have ranked first, pushing the counter-argument down
    kept = load_beir_task(_argument_task(tmp_path / "keep", meta={"ignore_identical_ids": False}))
    assert not kept.ignore_identical_ids
    with_self = Evaluator(Words(), config=config).evaluate_task(kept)
    assert all(qid in scores for qid, scores in with_self.run.items())
    assert with_self.result.metrics["mrr"] < outcome.result.metrics["mrr"] == pytest.approx(1.0)
    assert not load_beir_task(tmp_path / "arg", ignore_identical_ids=False).ignore_identical_ids


def test_mbeir_tasks_do_not_drop_identical_ids(mbeir_dir):
    assert not any(t.ignore_identical_ids for t in load_mbeir(mbeir_dir))


# -- evaluation says what failed (15.2) ------------------------------------------------------------

def _mixed_task(folder: Path) -> Path:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(folder / "img/red.png")
    corpus = [{"_id": "d0", "text": "alpha beta"}, {"_id": "d1", "text": "gamma delta"},
              {"_id": "p0", "image": "img/red.png"}, {"_id": "p1", "image": "img/gone.png"},
              {"_id": "p2", "image": "img/later.png"}]
    queries = [{"_id": "q0", "text": "alpha"}, {"_id": "q1", "text": "gamma"}, {"_id": "q2", "image": "img/later.png"}]
    return write_beir(folder, corpus, queries, [("q0", "d0", 1), ("q1", "d1", 1), ("q2", "p2", 1)])


def test_failures_are_counted_and_shown_in_the_summary_and_reports(tmp_path, monkeypatch, capsys):
    data = _mixed_task(tmp_path / "mixed")
    out = tmp_path / "out"
    assert cli_eval(monkeypatch, Words(), data, out) == 0
    captured = capsys.readouterr()
    [task] = json.loads((out / "scores.json").read_text())["tasks"]
    assert task["failures"]["queries"] == 1 and task["failures"]["candidates"] == 2
    assert [f["id"] for f in task["failures"]["first"]] == ["q2", "p1", "p2"]
    line = next(l for l in captured.out.splitlines() if "⚠ failed" in l)
    assert "corpus/mixed: 1 of 3 queries and 2 of 5 candidates failed" in line and "q2: no such image file" in line
    assert "1 with failures" in captured.out
    assert "FAILED: 1 of 3 queries" in captured.err  # the per-task log line
    md = (out / "results.md").read_text()
    assert "| mixed ⚠ |" in md and "## Failures and dropped queries" in md and "p1: no such image file" in md
    page = (out / "report.html").read_text()
    assert "Failures and dropped queries" in page and "p1: no such image file" in page
    # the failed query is left out of the BEIR mean (and said so), not a silent zero
    assert task["n_scored_queries"] == 2 and task["dropped_queries"]["failed"] == 1
    assert task["main_score"] == pytest.approx(1.0)


def test_metrics_without_basis_are_na(tmp_path, monkeypatch, capsys):
    data = write_beir(tmp_path / "empty", [{"_id": "d0", "text": "refused"}], [{"_id": "q0", "text": "refused"}],
                      [("q0", "d0", 1)])
    out = tmp_path / "out"
    assert cli_eval(monkeypatch, Words(refuse=("refused",)), data, out) == 0
    captured = capsys.readouterr()
    [task] = json.loads((out / "scores.json").read_text())["tasks"]
    assert task["main_score"] is None and task["modality_bias"]["bias"] is None
    assert "mean headline (NDCG@10) n/a, NDCG@10 n/a, modality bias n/a" in captured.out
    assert "ndcg@10 = n/a" in captured.err and "bias@5 = n/a" in captured.err and "0.0%" not in captured.err
    md = (out / "results.md").read_text()
    assert "| empty ⚠ | T→T | empty | NDCG@10 | n/a |" in md and "| **Average** |  |  |  | **n/a** |" in md
    # a task whose queries ran but found nothing: scored (0), yet its bias has no basis
    nothing = write_beir(tmp_path / "nothing", [{"_id": "d0", "text": "refused"}], [{"_id": "q0", "text": "x"}],
                         [("q0", "d0", 1)])
    result = Evaluator(Words(refuse=("refused",))).evaluate_task(load_beir_task(nothing)).result
    assert result.main_score == 0.0 and result.modality_bias["bias"] is None


def test_an_item_whose_file_changed_since_it_failed_is_embedded_again(tmp_path, monkeypatch, capsys):
    data = _mixed_task(tmp_path / "mixed")
    out = tmp_path / "out"
    assert cli_eval(monkeypatch, Words(), data, out) == 0
    capsys.readouterr()
    Image.new("RGB", (4, 4), "blue").save(data / "img/later.png")  # the user fixes the file
    model = Words()
    assert cli_eval(monkeypatch, model, data, out) == 0
    assert "already done" not in capsys.readouterr().err
    assert sorted(model.seen) == ["p2", "q2"]  # only what failed and changed; p1 is still missing
    [task] = json.loads((out / "scores.json").read_text())["tasks"]
    assert task["failures"]["queries"] == 0 and task["failures"]["candidates"] == 1
    assert task["n_scored_queries"] == 3 and task["main_score"] == pytest.approx(1.0)
    # unchanged since: the task is final again
    again = Words()
    assert cli_eval(monkeypatch, again, data, out) == 0
    assert "already done, skipped" in capsys.readouterr().err and again.calls == 0


def test_retry_errors_retries_every_recorded_failure(tmp_path, monkeypatch, capsys):
    data = write_beir(tmp_path / "t", [{"_id": "d0", "text": "good doc"}, {"_id": "d1", "text": "flaky doc"}],
                      [{"_id": "q0", "text": "flaky"}], [("q0", "d1", 1)])
    out = tmp_path / "out"
    assert cli_eval(monkeypatch, Words(refuse=("flaky",)), data, out) == 0
    model = Words()  # the cause went away (e.g. a fixed backend): same items, same fingerprints
    assert cli_eval(monkeypatch, model, data, out) == 0
    assert model.calls == 0 and "already done" in capsys.readouterr().err  # recorded failures stand
    assert cli_eval(monkeypatch, model, data, out, "--retry-errors") == 0
    assert sorted(model.seen) == ["d1", "q0"]
    [task] = json.loads((out / "scores.json").read_text())["tasks"]
    assert task["failures"] == {"queries": 0, "candidates": 0, "first": []} and task["main_score"] == 1.0


# -- eval resume: commits every N items or T seconds (15.7) ---------------------------------------

class Dies(Words):
    """Stops the whole run (not one item) after embedding ``budget`` items."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget

    def _embed_batch(self, items):
        if self.calls + len(items) > self.budget:
            raise KeyboardInterrupt
        return super()._embed_batch(items)


@pytest.mark.parametrize("every, seconds, lost_at_most", [(10, 1e9, 10), (10**9, 0.0, 4)])
def test_an_interruption_loses_at_most_the_work_since_the_last_commit(tmp_path, every, seconds, lost_at_most):
    items = word_items(100)
    dies = Dies(budget=57)
    store = EmbeddingStore(tmp_path, "m", commit_every=every, commit_seconds=seconds)
    with pytest.raises(KeyboardInterrupt):
        store.embed(dies, items, batch_size=1)
    assert dies.calls == 57
    reopened = EmbeddingStore(tmp_path, "m", commit_every=every, commit_seconds=seconds)
    committed = len(reopened)
    assert 57 - lost_at_most <= committed <= 57
    fresh = Words()
    vectors, kept, errors, _ = reopened.embed(fresh, items, batch_size=1)
    assert fresh.calls == 100 - committed  # only the uncommitted work is redone
    np.testing.assert_allclose(vectors, Words().embed(items).vectors, atol=1e-6)
    assert len(kept) == 100 and not errors


def test_killed_process_resumes_from_its_last_commit(tmp_path):
    """SIGKILL mid-run: the cache opens cleanly and only uncommitted work is redone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "run.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(Path(__file__).parent)!r})
from conftest import Words, word_items
from umr.eval.cache import EmbeddingStore

class Slow(Words):
    def _embed_batch(self, items):
        time.sleep(0.02)
        return super()._embed_batch(items)

EmbeddingStore({str(tmp_path / 'cache')!r}, "m", commit_every=8).embed(Slow(), word_items(400), batch_size=2)
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script)], env=env)
    fps = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = list((tmp_path / "cache").glob("*/fps.txt"))
        if found and found[0].read_bytes().count(b"\n") >= 40:
            fps = found[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fps is not None, "the subprocess never committed"
    seen_committed = fps.read_bytes().count(b"\n")
    reopened = EmbeddingStore(tmp_path / "cache", "m", commit_every=8)
    committed = len(reopened)
    assert seen_committed <= committed < 400  # whole lines count; a torn tail is cut off
    fresh = Words()
    vectors, kept, _, _ = reopened.embed(fresh, word_items(400), batch_size=2)
    assert fresh.calls == 400 - committed
    np.testing.assert_allclose(vectors, Words().embed(word_items(400)).vectors, atol=1e-6)


def test_torn_tails_are_cut_and_old_shards_are_kept(tmp_path):
    model = Words()
    store = EmbeddingStore(tmp_path, "m")
    store.embed(model, word_items(10))
    with (store.dir / "vectors.f32").open("ab") as handle:
        handle.write(b"\x00" * 100)  # part of a row whose fingerprint never landed
    with (store.dir / "fps.txt").open("ab") as handle:
        handle.write(b"0123abc")  # a torn line
    reopened = EmbeddingStore(tmp_path, "m")
    assert len(reopened) == 10
    vectors, kept, _, _ = reopened.embed(model, word_items(12))
    np.testing.assert_allclose(vectors, Words().embed(word_items(12)).vectors, atol=1e-6)
    assert len(EmbeddingStore(tmp_path, "m")) == 12
    # a cache written as shard-*.npz (before the append-only files) is taken over, not re-embedded
    legacy = tmp_path / "legacy"
    first = EmbeddingStore(legacy, "m")
    from umr.eval.cache import fingerprint

    items = word_items(5)
    np.savez(first.dir / "shard-000000.npz", fps=np.asarray([fingerprint(i) for i in items], dtype="U40"),
             vectors=Words().embed(items).vectors)
    taken = EmbeddingStore(legacy, "m")
    assert len(taken) == 5 and not list(taken.dir.glob("shard-*"))
    counting = Words()
    taken.embed(counting, items)
    assert counting.calls == 0


# -- memory: one pool's vectors (8.8) --------------------------------------------------------------

class Random(Embedder):
    """Seeded random vectors: cheap to make many of."""

    name = "random"
    dim = 1024
    batch_size = 4096

    def _cost(self, item):
        return 1

    def _embed_batch(self, items):
        return np.random.default_rng(int(items[0].id[1:])).standard_normal((len(items), self.dim))


@pytest.mark.slow
def test_the_evaluator_holds_one_pool_not_the_whole_cache(tmp_path):
    import tracemalloc

    from umr.data.tasks import RetrievalTask
    from umr.core.items import Modality

    n = 20_000
    pool = [Item.candidate(text=f"t{i}", id=f"d{i}") for i in range(n)]
    pool_bytes = n * Random.dim * 4

    def task(name, candidates, qids):
        queries = [Item.query(text=f"t{i}", id=f"q{i}") for i in qids]
        return RetrievalTask(name=name, queries=queries, candidates=candidates,
                             qrels={f"q{i}": {f"d{i}": 1} for i in qids}, category="T→T",
                             target_modality=Modality.TEXT, pool="corpus")

    other = pool[::-2]  # another pool: a reversed half, not contiguous in the cache
    config = EvalConfig(commit_every=4096)
    Evaluator(Random(), output=tmp_path, config=config).evaluate(
        [task("all", pool, range(3)), task("half", other, range(1, 7, 2))], write_reports=False)

    tracemalloc.start()
    try:
        store = EmbeddingStore(tmp_path / "cache", "random")
        opened = tracemalloc.get_traced_memory()[1]
        assert len(store) == n + 5 and opened < 0.2 * pool_bytes  # opening maps the vectors, loads none
        tracemalloc.reset_peak()
        evaluator = Evaluator(Random(), output=tmp_path, config=config)
        evaluator.evaluate_task(task("all-again", pool, range(5, 8)))  # new queries: searched again
        evaluator.evaluate_task(task("half-again", other, range(9, 15, 2)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the half pool is gathered once (0.5x, plus read buffers); the full pool is a view of the map;
    # no other copy (the evaluator used to hold every cached vector plus a stacked copy: >= 2x)
    assert peak < 0.8 * pool_bytes, f"{peak / pool_bytes:.2f}x the pool's vector bytes"


# -- compare (15.4) ----------------------------------------------------------------------------------

def test_compare_lists_the_union_of_tasks_once_with_sides_named(tmp_path, capsys):
    from umr.data.tasks import RetrievalTask
    from umr.core.items import Modality

    def task(name):
        cands = [Item.candidate(text=f"{name} x{j}", id=f"{name}-d{j}") for j in range(3)]
        return RetrievalTask(name=name, queries=[Item.query(text=f"{name} x0", id="q0")], candidates=cands,
                             qrels={"q0": {f"{name}-d0": 1}}, category="T→T", target_modality=Modality.TEXT,
                             pool="corpus", main_metric="ndcg@10")

    evaluate(Words("model-a"), [task("T0"), task("T1")], output=tmp_path / "a")
    evaluate(Words("model-b"), [task("T1"), task("T2")], output=tmp_path / "b")
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| T") and not line.startswith("| Task")]
    assert [r.split("|")[1].strip() for r in rows] == ["T0", "T1", "T2"]  # each once: NDCG@10 is the headline
    assert f"A: {tmp_path / 'a'} (model-a)" in table and f"B: {tmp_path / 'b'} (model-b)" in table
    assert "only in A" in rows[0] and "only in B" in rows[2] and "+0.00" in rows[1]
    assert "Only in A: T0 [corpus]" in table and "Only in B: T2 [corpus]" in table
    assert main(["eval", "compare", str(tmp_path / "a"), str(tmp_path / "nothing")]) == 2


def test_fingerprints_of_another_width_are_read_back(tmp_path):
    """Fingerprints may change format (width) between versions: both kinds of lines stay usable."""
    store = EmbeddingStore(tmp_path, "m")
    store._append(["a" * 40, "b" * 64, "c" * 40], np.eye(3, 4, dtype=np.float32))
    reopened = EmbeddingStore(tmp_path, "m")
    assert len(reopened) == 3 and reopened._rows(["b" * 64, "c" * 40, "a" * 40, "d"]).tolist() == [1, 2, 0, -1]
    with (reopened.dir / "fps.txt").open("ab") as handle:
        handle.write(b"torn")
    assert len(EmbeddingStore(tmp_path, "m")) == 3
    assert (reopened.dir / "fps.txt").stat().st_size == 40 + 64 + 40 + 3


def test_two_stores_sharing_a_cache_never_misalign_rows(tmp_path):
    """Two evaluations into one cache (e.g. both pools at once): the second reads what the first
    committed instead of appending over it with stale row numbers."""
    a, b = EmbeddingStore(tmp_path, "m"), EmbeddingStore(tmp_path, "m")
    first, second = Words(), Words()
    a.embed(first, word_items(10))
    vectors, kept, _, _ = b.embed(second, word_items(15)[5:])
    assert second.calls == 5 and len(kept) == 10
    np.testing.assert_allclose(vectors, Words().embed(word_items(15)[5:]).vectors, atol=1e-6)
    again = Words()
    vectors, _, _, _ = a.embed(again, word_items(15))
    assert again.calls == 0
    np.testing.assert_allclose(vectors, Words().embed(word_items(15)).vectors, atol=1e-6)


def test_retry_errors_retries_each_item_once_per_run_and_refreshes_every_task(tmp_path):
    """Two tasks share a candidate that failed: one retry serves both, and the second task's
    finished result (which counted the failure) is scored again, not served stale."""
    from umr.data.tasks import RetrievalTask
    from umr.core.items import Modality

    def task(name):
        cands = [Item.candidate(text="flaky doc", id="shared"), Item.candidate(text=f"{name} doc", id=f"{name}-d")]
        return RetrievalTask(name=name, queries=[Item.query(text="flaky", id="q")], candidates=list(cands),
                             qrels={"q": {"shared": 1}}, category="T→T", target_modality=Modality.TEXT, pool="corpus")

    first = evaluate(Words(refuse=("flaky",)), [task("A"), task("B")], output=tmp_path)
    assert [r["failures"]["candidates"] for r in first["tasks"]] == [1, 1]
    still = evaluate(Words(refuse=("flaky",)), [task("A"), task("B")], output=tmp_path, retry_errors=True)
    assert [r["failures"]["candidates"] for r in still["tasks"]] == [1, 1]  # retried, failed again
    fixed = Words()
    scores = evaluate(fixed, [task("A"), task("B")], output=tmp_path, retry_errors=True)
    assert sorted(fixed.seen) == ["q", "shared"]  # once, though both tasks hold them
    assert [r["failures"]["candidates"] for r in scores["tasks"]] == [0, 0]
    assert [r["main_score"] for r in scores["tasks"]] == [1.0, 1.0]
