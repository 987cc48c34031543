"""Metric parity with pytrec_eval (trec_eval) on random runs and qrels, and UniIR's Recall@k."""

from __future__ import annotations

import random

import pytest

from umr.eval.metrics import evaluate_run, mean_metrics, modality_bias, query_metrics, trec_order

pytrec_eval = pytest.importorskip("pytrec_eval")

K = (1, 3, 5, 10, 20)


def random_case(rng: random.Random, *, n_queries=40, n_docs=60, graded=True):
    docs = [f"d{i:03d}" for i in range(n_docs)] + [f"x{i}" for i in range(5)]  # mixed docid shapes
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.sample(docs, rng.randint(1, 12))
        grades = [0, 1, 2, 3] if graded else [0, 1]
        qrels[qid] = {d: rng.choice(grades) for d in judged}
        if rng.random() < 0.15:
            continue  # a query missing from the run
        retrieved = rng.sample(docs, rng.randint(0, 30))
        # coarse scores make many ties; trec_eval breaks them by docid
        run[qid] = {d: float(rng.randint(0, 6)) / 4 for d in retrieved}
    run["q_not_judged"] = {"d001": 1.0}  # in the run but not in the qrels: ignored by both
    return run, qrels


def pytrec(run, qrels, relevance_level=1, cut_run_at=None):
    measures = {"map", "recip_rank", "ndcg_cut.10", "recall." + ",".join(map(str, K)), "P." + ",".join(map(str, K))}
    if cut_run_at is not None:
        run = {q: {d: s[d] for d in trec_order(s)[:cut_run_at]} for q, s in run.items()}
    ev = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=relevance_level)
    return ev.evaluate(run)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("relevance_level", [1, 2])
def test_per_query_metrics_equal_pytrec_eval(seed, relevance_level):
    rng = random.Random(seed)
    run, qrels = random_case(rng, graded=seed % 3 != 0)
    ours = evaluate_run(run, qrels, k_values=K, ndcg_k=(10,), mrr_k=(10,), relevance_level=relevance_level)
    ref = pytrec(run, qrels, relevance_level)
    ref_mrr10 = pytrec(run, qrels, relevance_level, cut_run_at=10)
    assert set(ref) == {q for q in qrels if q in run}
    for qid, m in ref.items():
        assert ours[qid]["map"] == pytest.approx(m["map"], abs=1e-6), qid
        assert ours[qid]["mrr"] == pytest.approx(m["recip_rank"], abs=1e-6), qid
        assert ours[qid]["mrr@10"] == pytest.approx(ref_mrr10[qid]["recip_rank"], abs=1e-6), qid
        assert ours[qid]["ndcg@10"] == pytest.approx(m["ndcg_cut_10"], abs=1e-6), qid
        for k in K:
            assert ours[qid][f"recall@{k}"] == pytest.approx(m[f"recall_{k}"], abs=1e-6), (qid, k)
            assert ours[qid][f"p@{k}"] == pytest.approx(m[f"P_{k}"], abs=1e-6), (qid, k)
    # queries the run does not answer score 0 and count in the default (trec_eval -c) average
    for qid in set(qrels) - set(run):
        assert all(v == 0.0 for v in ours[qid].values())
    full = mean_metrics(ours)
    for name, ref_name in (("map", "map"), ("ndcg@10", "ndcg_cut_10"), ("mrr", "recip_rank")):
        ref_sum = sum(m[ref_name] for m in ref.values())
        assert full[name] == pytest.approx(ref_sum / len(qrels), abs=1e-6)
        assert mean_metrics(ours, run=run, average="run")[name] == pytest.approx(ref_sum / len(ref), abs=1e-6)


def test_ties_are_broken_by_docid_descending_like_trec_eval():
    scores = {"a": 0.5, "c": 0.5, "b": 0.5, "z": 0.9}
    assert trec_order(scores) == ["z", "c", "b", "a"]
    qrels = {"q": {"a": 1}}
    ref = pytrec({"q": scores}, qrels)["q"]
    ours = evaluate_run({"q": scores}, qrels, k_values=K)["q"]
    assert ours["mrr"] == pytest.approx(ref["recip_rank"]) == pytest.approx(0.25)


def test_hit_at_k_is_uniir_recall():
    # UniIR: 1 if any positive is in the top k, whatever the number of positives
    m = query_metrics(["n1", "p1", "n2", "n3", "n4", "p2"], {"p1": 1, "p2": 1, "p3": 1}, k_values=(1, 2, 5))
    assert (m["hit@1"], m["hit@2"], m["hit@5"]) == (0.0, 1.0, 1.0)
    assert m["recall@5"] == pytest.approx(1 / 3)  # trec_eval's recall differs
    # no positive at all -> 0, as UniIR's compute_recall_at_k
    assert query_metrics(["a"], {"a": 0}, k_values=(1,))["hit@1"] == 0.0
    # graded qrels: any grade > 0 is a positive for hit@k, even below relevance_level
    assert query_metrics(["a"], {"a": 1}, k_values=(1,), relevance_level=2)["hit@1"] == 1.0


def test_modality_bias():
    rankings = {"q1": ["i1", "t1", "t2"], "q2": ["t3", "t4", "i2"]}
    mods = {"i1": "image", "i2": "image", "t1": "text", "t2": "text", "t3": "text", "t4": "text"}
    out = modality_bias(rankings, mods, "image", k=2)
    assert out["bias"] == pytest.approx(3 / 4)
    assert out["shares"] == {"image": 0.25, "text": 0.75}
