"""Evaluation cost: does ``umr eval`` cost more than the embedding it needs?

Builds a retrieval task of Q text queries against an N-candidate pool (short synthetic
sentences from a fixed vocabulary, one judged positive per query), then, in one run:

1. **embedding alone** — ``model.embed`` on every candidate and every query, the least any
   evaluation has to spend;
2. **the whole evaluation** — ``Evaluator(...).evaluate`` from a cold cache: embedding (through
   the resumable cache), exact top-100 search, every metric, the modality-bias diagnostic, both
   TREC run files, scores.json, results.md and report.html with charts.

The bar: (2) ≤ (1) × 1.10. On a shared machine the two phases can see different load, so the
evaluation's own embedding time (timed inside it) is reported too, with the ratio of the whole
evaluation to it: that ratio isolates what evaluation adds beyond embedding. Also reported: the evaluator's own breakdown (embed / search / score /
write / report). Default sizes are Q=1,000 and N=100,000 (minilm on 2 cores: a few minutes);
``--quick`` uses Q=200, N=10,000. Prints a table and writes ``benchmarks/results/eval_cost.json``
(``eval_cost.quick.json`` with ``--quick``). Never asserted in tests.

    python benchmarks/eval_cost.py            # full
    python benchmarks/eval_cost.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("river mountain city bridge museum library garden market harbor station castle forest "
         "desert island valley painting statue concert festival recipe engine rocket planet ocean "
         "storm winter summer village tower church school hospital airport stadium theater bakery "
         "camera bicycle guitar violin piano dragon horse tiger eagle whale coffee bread cheese").split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))


def build_task(n_queries: int, n_candidates: int, seed: int = 0):
    from umr.eval.tasks import RetrievalTask
    from umr.core.items import Item, Modality

    rng = random.Random(seed)
    candidates = [Item.candidate(sentence(rng), id=f"d{i}") for i in range(n_candidates)]
    queries, qrels = [], {}
    for i in range(n_queries):
        target = rng.randrange(n_candidates)
        words = candidates[target].text.split()
        queries.append(Item.query(" ".join(rng.sample(words, min(4, len(words)))), id=f"q{i}"))
        qrels[f"q{i}"] = {f"d{target}": 1}
    return RetrievalTask(name="synthetic", queries=queries, candidates=candidates, qrels=qrels,
                         category="T→T", target_modality=Modality.TEXT, dataset="synthetic",
                         pool="corpus", main_metric="ndcg@10")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="Q=200, N=10,000")
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--candidates", type=int, default=None)
    parser.add_argument("--model", default="minilm")
    args = parser.parse_args()
    n_q = args.queries or (200 if args.quick else 1000)
    n_c = args.candidates or (10_000 if args.quick else 100_000)

    from umr import load_model
    from umr.eval import EvalConfig, Evaluator

    model = load_model(args.model)
    task = build_task(n_q, n_c)
    model.embed(task.queries[:64])  # warm-up (thread pools, first-call allocations)

    t0 = time.perf_counter()
    model.embed(task.candidates)
    model.embed(task.queries)
    embed_only = time.perf_counter() - t0

    with tempfile.TemporaryDirectory(prefix="umr-eval-cost-") as tmp:
        t0 = time.perf_counter()
        scores = Evaluator(model, output=Path(tmp) / "out", config=EvalConfig(depth=100)).evaluate(
            [task], benchmark="synthetic")
        evaluation = time.perf_counter() - t0
        run_bytes = sum(p.stat().st_size for p in (Path(tmp) / "out" / "runs").rglob("*.trec"))
    timings = scores["timings"]
    ratio = evaluation / embed_only
    result = {
        "queries": n_q, "candidates": n_c, "model": args.model, "depth": 100,
        "embedding_only_s": round(embed_only, 3), "evaluation_s": round(evaluation, 3),
        "ratio": round(ratio, 4), "bar": 1.10, "meets_bar": ratio <= 1.10,
        "evaluator_breakdown_s": {k: round(v, 3) for k, v in timings.items()},
        "overhead_beyond_own_embedding_s": round(evaluation - timings["embed_s"], 3),
        # robust to other load on the machine: both numbers come from the same window
        "ratio_to_own_embedding": round(evaluation / timings["embed_s"], 4),
        "run_file_bytes": run_bytes, "ndcg@10": scores["tasks"][0]["metrics"]["ndcg@10"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "omp_threads": os.environ.get("OMP_NUM_THREADS")},
        "quick": args.quick,
    }

    rows = [("embedding alone (candidates + queries)", f"{embed_only:.2f} s"),
            ("whole evaluation, cold cache", f"{evaluation:.2f} s"),
            ("  of which embedding", f"{timings['embed_s']:.2f} s"),
            ("  of which search (exact top-100)", f"{timings['search_s']:.2f} s"),
            ("  of which metrics + modality bias", f"{timings['score_s']:.2f} s"),
            ("  of which run files", f"{timings['write_s']:.2f} s"),
            ("  of which reports (md, html, charts)", f"{timings.get('report_s', 0.0):.2f} s"),
            ("evaluation / embedding alone", f"{ratio:.3f}  (bar: <= 1.10 -> {'met' if ratio <= 1.10 else 'NOT met'})"),
            ("evaluation / its own embedding time", f"{evaluation / timings['embed_s']:.3f}")]
    width = max(len(r[0]) for r in rows)
    print(f"umr eval cost: {n_q:,} queries x {n_c:,} candidates, model {args.model}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    out = Path(__file__).parent / "results" / ("eval_cost.quick.json" if args.quick else "eval_cost.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
