"""``umr eval --rerank``: retriever and reranked scores side by side, rerank scores cached and resumable."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from rerank_fixtures import ConceptReranker

from umr.cli import main
from umr.eval import EvalConfig, Evaluator
from umr.models.base import Embedder
from umr.core.items import Item

_spec = importlib.util.spec_from_file_location("eval_fixtures", Path(__file__).parents[1] / "eval" / "conftest.py")
eval_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_fixtures)


class ShiftedEmbedder(Embedder):
    """A poor retriever: each candidate looks like the next concept's queries, never like its own."""

    name = "shifted"
    dim = eval_fixtures.N_CONCEPTS + 1

    def _cost(self, item: Item) -> int:
        return 1

    def _embed_batch(self, items):
        out = np.zeros((len(items), self.dim), np.float32)
        for row, item in enumerate(items):
            concept = eval_fixtures.concept_of(item)
            out[row, concept if item.is_query else concept + 1] = 1.0
            out[row, -1] = 0.1
        return out


class Interrupted(ConceptReranker):
    """Stops the run (as Ctrl-C would) after ``after`` batches; counts the pairs it scored."""

    def __init__(self, after=None, fail=()):
        super().__init__(fail=fail)
        self.after, self.scored = after, 0

    def _score_batch(self, pairs):
        if self.after is not None and len(self.batches) >= self.after:
            raise KeyboardInterrupt
        out = super()._score_batch(pairs)
        self.scored += len(pairs)
        return out


@pytest.fixture(scope="module")
def mbeir(tmp_path_factory):
    return eval_fixtures.build_mbeir(tmp_path_factory.mktemp("mbeir") / "M-BEIR")


def _tasks(root, names=("mscoco_task0", "nights_task4")):
    from umr.data.mbeir import MBEIR

    bench = MBEIR(root)
    return [bench.task(name, pool="local") for name in names]


def test_reranked_scores_beside_the_retrievers(mbeir, tmp_path):
    out = tmp_path / "out"
    reranker = Interrupted(fail={"5:1021"})  # one candidate image of nights_task4 cannot be read
    scores = Evaluator(ShiftedEmbedder(), output=out, reranker=reranker, rerank_k=10).evaluate(
        _tasks(mbeir), benchmark="mbeir")
    for task in scores["tasks"]:
        assert task["main_score"] == 0.0
        assert task["rerank"]["k"] == 10
    coco, nights = scores["tasks"]
    assert coco["rerank"]["main_score"] == 1.0 and coco["rerank"]["pair_errors"] == {}
    errors = nights["rerank"]["pair_errors"]  # reported per query; the rest of each list is reranked
    assert {cid for per_query in errors.values() for cid in per_query} == {"5:1021"}
    assert nights["rerank"]["metrics"]["hit@1"] == pytest.approx(5 / 6)  # concept 21's positive stays below
    runs = (out / "runs" / "local" / "nights_task4.rerank.trec").read_text().splitlines()
    ranked_21 = [line.split()[2] for line in runs if line.split()[0] == "5:1"]
    assert ranked_21[-1] == "5:1021" and len(ranked_21) == 10  # below the nine reranked
    assert scores["averages"]["local"]["rerank_main_score"] == pytest.approx(
        (1.0 + nights["rerank"]["main_score"]) / 2)
    assert json.loads((out / "scores.json").read_text())["tasks"][0]["rerank"]["main_score"] == 1.0
    markdown = (out / "results.md").read_text()
    assert "Local reranked" in markdown and "| 0.00 | 100.00 |" in markdown
    assert "Local reranked" in (out / "report.html").read_text()
    assert (out / "runs" / "local" / "mscoco_task0.rerank.trec").is_file()


def test_a_rerun_after_an_interruption_scores_only_the_missing_pairs(mbeir, tmp_path):
    out = tmp_path / "out"
    config = EvalConfig(commit_every=4)
    first = Interrupted(after=5)  # 2 pairs a batch, shards of 4 pairs: 2 shards written, then stopped
    with pytest.raises(KeyboardInterrupt):
        Evaluator(ShiftedEmbedder(), output=out, config=config, reranker=first, rerank_k=10).evaluate(_tasks(mbeir))
    second = Interrupted()
    scores = Evaluator(ShiftedEmbedder(), output=out, config=config, reranker=second,
                       rerank_k=10).evaluate(_tasks(mbeir))
    total = 2 * 6 * 10  # two tasks, six queries, ten candidates each
    assert first.scored == 10 and second.scored == total - 8
    assert all(t["rerank"]["main_score"] == 1.0 for t in scores["tasks"])
    third = Interrupted()  # finished: nothing is scored again
    Evaluator(ShiftedEmbedder(), output=out, config=config, reranker=third, rerank_k=10).evaluate(_tasks(mbeir))
    assert third.scored == 0


def test_cli_eval_rerank(mbeir, tmp_path, tiny_gme_dir, tiny_reranker_dir, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_gme_dir), "--benchmark", "mbeir", "--data", str(mbeir), "--tasks",
            "nights_task4", "--output", str(out), "--no-progress", "--rerank", str(tiny_reranker_dir),
            "--rerank-k", "3"]
    assert main(args) == 0
    assert "reranked headline" in capsys.readouterr().out
    task = json.loads((out / "scores.json").read_text())["tasks"][0]
    assert task["rerank"]["k"] == 3 and 0.0 <= task["rerank"]["main_score"] <= 1.0
    cached = sum(1 for _ in (out / "cache" / "rerank").rglob("shard-*.npz"))
    assert cached >= 1
    assert main(args) == 0  # finished: re-reported from the task files
    assert "already done" in capsys.readouterr().err
