"""Late interaction at scale (issue 24): a first stage + exact rerank against exact MaxSim, the
bytes each token storage type costs, and exact MaxSim's scan rate against this machine's memory
bandwidth, all measured in one run.

Data: synthetic clustered token vectors (unit 128-d tokens around a few of many topics per
document, as a page's tokens cluster around what it shows; queries of 20 tokens drawn near one
document's tokens). Full size: 20,000 documents x 256 tokens and 200 queries (the issue's);
``--quick``: 2,000 x 64 and 50 queries.

* exact: :func:`~umr.index.multivector.maxsim.maxsim_topk` over float16 codes (the index's default),
  all queries in one scan, and one query at a time (a scan per query: the memory-bound case);
* first stages (:class:`~umr.index.multivector.first_stage.MuveraStage`, ``PooledStage``) at
  several rerank depths: recall@10 of exact MaxSim's top 10, queries/s, speed-up over exact;
* storage: bytes per stored token for float32 / float16 / int8 / binary, and what each costs in
  exactness (recall@10 and the largest score error against float32 storage, on the first 2,000
  documents);
* bandwidth: a streaming read of a buffer several times the cache (``numpy`` sum over float32),
  against which the exact scan's bytes/s are put.

Threads: ``--threads`` (default 1) for torch (the MaxSim kernel) and faiss (the first stage), the
same for exact and first stage, recorded with the load average. On the shared, loaded 2-core
machine the results were measured on, torch's default pool of 2 threads ran the same exact scan
2-4x slower than one thread (every block's product and cast waits for a descheduled worker) and
a rerank of 50 documents 10x slower.

    PYTHONPATH=src .venv/bin/python benchmarks/late_interaction.py --quick
    PYTHONPATH=src .venv/bin/python benchmarks/late_interaction.py

Writes ``benchmarks/results/late_interaction.json`` (``late_interaction.quick.json`` with --quick)
and prints a table. The tests run it at toy sizes (``--docs``/``--tokens``/``--queries``); they
never judge a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine  # noqa: E402

from umr.index.multivector import (BinaryEncoding, Float16Encoding, Float32Encoding, Int8Encoding,  # noqa: E402
                                   TokenVectors, maxsim_topk)
from umr.index.multivector.first_stage import LateInteractionSearch, MuveraStage, PooledStage  # noqa: E402

K = 10
DIM = 128
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 20.0


def clustered(n_docs: int, n_tokens: int, n_queries: int, query_tokens: int, *, seed: int = 0,
              topics: int = 512) -> tuple[TokenVectors, list[np.ndarray]]:
    """float16 documents (generated in chunks, so the float32 copy never exists whole) and float32 queries."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((topics, DIM)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    codes = np.empty((n_docs * n_tokens, DIM), np.float16)
    per_doc_topics = 4
    owners = rng.integers(0, topics, (n_docs, per_doc_topics))
    chunk = max(1, 200_000 // n_tokens)
    for start in range(0, n_docs, chunk):
        stop = min(n_docs, start + chunk)
        pick = owners[start:stop][np.arange(stop - start)[:, None], rng.integers(0, per_doc_topics, (stop - start, n_tokens))]
        tokens = centers[pick] + 0.6 * rng.standard_normal((stop - start, n_tokens, DIM)).astype(np.float32) / np.sqrt(DIM)
        tokens /= np.linalg.norm(tokens, axis=2, keepdims=True)
        codes[start * n_tokens:stop * n_tokens] = tokens.reshape(-1, DIM)
    offsets = np.arange(0, (n_docs + 1) * n_tokens, n_tokens, dtype=np.int64)
    docs = TokenVectors(codes, offsets, Float16Encoding(DIM))
    queries = []
    for target in rng.integers(0, n_docs, n_queries):
        own = docs[int(target)][rng.choice(n_tokens, min(query_tokens, n_tokens), replace=n_tokens < query_tokens)]
        q = own + 0.8 * rng.standard_normal(own.shape).astype(np.float32) / np.sqrt(DIM)
        queries.append((q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32))
    return docs, queries


def read_bandwidth(megabytes: int = 1024, repeats: int = 5) -> float:
    """Bytes/s of a streaming read (numpy sum over a float32 buffer far larger than the caches)."""
    buffer = np.ones(megabytes * (1 << 20) // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        buffer.sum()
        best = min(best, time.perf_counter() - start)
    return buffer.nbytes / best


def timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, len(t[t >= 0])) for f, t in zip(found, truth)]))


def run(args) -> dict:
    docs, queries = clustered(args.docs, args.tokens, args.queries, args.query_tokens)
    queries = queries[:args.exact_queries or None]  # every number below is over these queries
    out: dict = {"machine": machine(), "threads": args.threads, "load_average_before": os.getloadavg()[0],
                 "docs": args.docs, "tokens_per_doc": args.tokens, "dim": DIM,
                 "queries": len(queries), "query_tokens": args.query_tokens, "k": K}
    bandwidth = read_bandwidth(args.bandwidth_mb)
    out["memory_read_bandwidth_gb_s"] = bandwidth / 1e9

    # exact MaxSim over float16 codes: every query in one scan, and one query per scan
    (exact_scores, exact_rows), batch_s = timed(lambda: maxsim_topk(queries, docs, K))
    single = queries[:max(1, min(len(queries), args.single_queries))]
    _, single_s = timed(lambda: [maxsim_topk([q], docs, K) for q in single])
    scanned = docs.codes.nbytes
    out["exact"] = {
        "batch_qps": len(queries) / batch_s, "batch_seconds": batch_s,
        "single_qps": len(single) / single_s,
        "single_scan_gb_s": scanned * len(single) / single_s / 1e9,
        "single_scan_share_of_bandwidth": scanned * len(single) / single_s / bandwidth,
        "batch_gflop_s": 2.0 * sum(len(q) for q in queries) * docs.n_tokens * DIM / batch_s / 1e9,
    }

    # first stages, built once each, at several rerank depths (batch: all queries in one call)
    stages = []
    makers = {"muvera": lambda: MuveraStage(DIM, k_sim=4, d_proj=16, repetitions=10),
              "pooled-4": lambda: PooledStage(DIM, n_vectors=4, token_k=args.token_k)}
    for name in args.stages:
        stage = makers[name]()
        _, build_s = timed(lambda: stage.add(docs))
        search = LateInteractionSearch(docs, stage)
        for depth in args.depths:
            (scores, rows), seconds = timed(lambda: search.search(queries, K, depth=depth))
            stages.append({"stage": name, "depth": depth, "build_seconds": build_s, "recall_at_10": recall(rows, exact_rows),
                           "qps": len(queries) / seconds, "speedup_vs_exact": batch_s / seconds,
                           "max_score_error": float(np.nanmax(np.abs(np.where(rows >= 0, scores, np.nan)
                                                                     - np.where(rows >= 0, _exact_of(rows, exact_scores, exact_rows), np.nan))))})
    out["first_stages"] = stages
    passing = [s for s in stages if s["recall_at_10"] >= TARGET_RECALL]
    best = max(passing, key=lambda s: s["speedup_vs_exact"], default=None)
    out["best_first_stage"] = best
    out["meets_target"] = bool(best is not None and best["speedup_vs_exact"] >= TARGET_SPEEDUP)

    # storage: bytes per token, and exactness against float32 on a subset
    subset = docs.take(np.arange(min(len(docs), 2000)))
    floats = subset.encoding.decode(subset.codes)
    reference_scores, reference_rows = maxsim_topk(queries, TokenVectors(floats, subset.offsets, Float32Encoding(DIM)), K)
    sample = floats[np.random.default_rng(1).choice(len(floats), min(len(floats), 100_000), replace=False)]
    storage = {}
    for name, encoding in (("float32", Float32Encoding(DIM)), ("float16", Float16Encoding(DIM)),
                           ("int8", Int8Encoding.fit(sample)), ("binary", BinaryEncoding.fit(sample))):
        stored = TokenVectors(encoding.encode(floats), subset.offsets, encoding)
        scores, rows = maxsim_topk(queries, stored, K)
        storage[name] = {"bytes_per_token": stored.nbytes / stored.n_tokens,
                         "code_bytes_per_token": encoding.bytes_per_token,
                         "recall_at_10_vs_float32": recall(rows, reference_rows),
                         "max_top1_score_error": float(np.max(np.abs(scores[:, 0] - reference_scores[:, 0])))}
    out["storage"] = storage
    out["load_average_after"] = os.getloadavg()[0]
    return out


def _exact_of(rows: np.ndarray, exact_scores: np.ndarray, exact_rows: np.ndarray) -> np.ndarray:
    """Exact MaxSim of ``rows`` where the exact top-k holds them (NaN elsewhere): the rerank's scores
    must equal them."""
    out = np.full(rows.shape, np.nan, np.float32)
    for i in range(len(rows)):
        lookup = dict(zip(exact_rows[i].tolist(), exact_scores[i].tolist()))
        for j, row in enumerate(rows[i]):
            if int(row) in lookup:
                out[i, j] = lookup[int(row)]
    return out


def table(doc: dict) -> str:
    e = doc["exact"]
    lines = [f"late interaction: {doc['docs']} docs x {doc['tokens_per_doc']} tokens x {doc['dim']}-d, "
             f"{doc['queries']} queries x {doc['query_tokens']} tokens, float16 codes",
             f"CPU {doc['machine']['cpu']}, {doc['threads']} thread(s), load average {doc['load_average_before']:.1f} "
             f"before, {doc['load_average_after']:.1f} after",
             f"memory read bandwidth {doc['memory_read_bandwidth_gb_s']:.1f} GB/s",
             f"exact MaxSim: {e['batch_qps']:.2f} q/s (all queries in one scan, {e['batch_gflop_s']:.0f} GFLOP/s); "
             f"one query per scan {e['single_qps']:.2f} q/s, {e['single_scan_gb_s']:.2f} GB/s scanned = "
             f"{100 * e['single_scan_share_of_bandwidth']:.0f}% of the read bandwidth",
             "first stage   depth  recall@10  q/s      speed-up  max score err"]
    for s in doc["first_stages"]:
        lines.append(f"{s['stage']:<12}  {s['depth']:>5}  {s['recall_at_10']:.3f}      {s['qps']:<8.1f} "
                     f"{s['speedup_vs_exact']:>6.1f}x   {s['max_score_error']:.1e}")
    best = doc["best_first_stage"]
    lines.append(f"target recall@10 >= {TARGET_RECALL} at >= {TARGET_SPEEDUP:g}x: "
                 + (f"{'MET' if doc['meets_target'] else 'NOT met'} (best: {best['stage']} depth {best['depth']}, "
                    f"{best['speedup_vs_exact']:.1f}x)" if best else "NOT met (no stage reaches the recall)"))
    lines.append("storage  bytes/token  recall@10 vs float32  max top-1 score error")
    for name, s in doc["storage"].items():
        lines.append(f"{name:<8} {s['bytes_per_token']:>11.2f}  {s['recall_at_10_vs_float32']:>20.3f}  "
                     f"{s['max_top1_score_error']:.2e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 docs x 64 tokens, 50 queries")
    parser.add_argument("--docs", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--query-tokens", type=int, default=20)
    parser.add_argument("--single-queries", type=int, default=5, help="queries timed one scan each")
    parser.add_argument("--depths", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--token-k", type=int, default=64, help="pooled stage: hits per query token")
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument("--bandwidth-mb", type=int, default=1024)
    parser.add_argument("--exact-queries", type=int, default=None,
                        help="measure everything on the first N queries only (exact MaxSim of 200 queries over "
                             "20k x 256 tokens is about 5 TFLOP: 2 minutes at the 45 GFLOP/s one thread gave)")
    parser.add_argument("--stages", nargs="+", choices=["muvera", "pooled-4"], default=["muvera", "pooled-4"])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.docs = args.docs or (2000 if args.quick else 20000)
    args.tokens = args.tokens or (64 if args.quick else 256)
    args.queries = args.queries or (50 if args.quick else 200)
    import faiss

    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    try:
        doc = run(args)
    finally:  # the tests run this in their own process: leave its thread pools as they were
        torch.set_num_threads(torch_threads)
        faiss.omp_set_num_threads(faiss_threads)
    out = args.out or ROOT / "benchmarks" / "results" / ("late_interaction.quick.json" if args.quick else "late_interaction.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(table(doc))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
