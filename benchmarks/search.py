"""Search speed of the embedded index against raw FAISS on the same data, in one run.

For each corpus size (full: 100k and 1M 384-d vectors; ``--quick``: 10k and 100k):

* exact: ``Index.search_vectors`` (umr's user-facing path: a persisted, reopened index, ids and
  records attached) against a raw ``faiss.IndexFlatIP.search`` on the same vectors; single-query
  latency (p50 / p99) and QPS, and the ratio umr / raw.
* HNSW: the index's persisted HNSW graph through ``Index.search_vectors`` against the same FAISS
  graph searched directly, for several ``efSearch``; QPS, latency and recall@10 against exact.

Data: "embedding-like" vectors, L2-normalised: points of intrinsic dimension 32 (a Gaussian
mixture of 1,000 clusters in 32-d, mapped linearly into 384-d, plus isotropic noise), as text and
image embeddings are far from uniformly spread; queries are held-out points of the same
distribution. At the small size the same is also measured on uniformly random vectors, the worst
case for any graph index. Ratios are measured in the same run; the tests never time anything.

    .venv/bin/python benchmarks/search.py --quick   # ~1-2 min
    .venv/bin/python benchmarks/search.py           # 100k and 1M (the 1M HNSW build takes minutes)

Prints a table and writes ``benchmarks/results/search.json`` (``search.quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

DIM = 384
K = 10


def embedding_like(n: int, seed: int, *, intrinsic: int = 32, clusters: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    basis_rng = np.random.default_rng(12345)  # the same "model" for corpus and queries
    mix = basis_rng.standard_normal((DIM, intrinsic)).astype(np.float32)
    centers = basis_rng.standard_normal((clusters, intrinsic)).astype(np.float32)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        z = centers[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, intrinsic)).astype(np.float32)
        x = z @ mix.T + 0.5 * rng.standard_normal((m, DIM)).astype(np.float32)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def uniform(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed_pair(raw_search, umr_search, queries: np.ndarray, rounds: int = 2) -> tuple[dict, dict]:
    """One query at a time, raw and umr interleaved query by query, so that both see the same
    machine load (the machine may be shared); latency percentiles and QPS of each."""
    raw_search(queries[:1])  # warm-up (lazily built structures)
    umr_search(queries[:1])
    lat = {"raw": [], "umr": []}
    for r in range(rounds):
        for i, q in enumerate(queries):
            order = (("raw", raw_search), ("umr", umr_search)) if (i + r) % 2 == 0 else \
                (("umr", umr_search), ("raw", raw_search))
            for name, fn in order:
                t = time.perf_counter()
                fn(q[None])
                lat[name].append(time.perf_counter() - t)
    out = []
    for name in ("raw", "umr"):
        ms = np.array(lat[name]) * 1000
        out.append({"qps": 1000.0 / float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99))})
    return out[0], out[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def run_size(n: int, data: str, n_queries: int, work: Path, *, hnsw: bool, m: int, ef_construction: int,
             ef_values: list[int]) -> dict:
    import faiss

    from umr.index import FlatStore, Index

    print(f"\n== {n:,} x {DIM} ({data}) ==", flush=True)
    make = embedding_like if data == "embedding-like" else uniform
    t = time.perf_counter()
    vectors = make(n, seed=1)
    queries = make(n_queries, seed=2)
    print(f"data generated in {time.perf_counter() - t:.1f}s", flush=True)

    folder = work / f"ix-{data}-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    t = time.perf_counter()
    store = FlatStore.create(folder, dim=DIM, config={"model": {"name": "synthetic", "dim": DIM, "options": {}},
                                                      "method": "hnsw" if hnsw else "exact", "ef_search": 64})
    step = 250_000
    for start in range(0, n, step):
        records = [{"id": f"v{i}", "hash": "", "modality": "text", "meta": {}}
                   for i in range(start, min(start + step, n))]
        store.commit(records, vectors[start:start + step])
    write_s = time.perf_counter() - t
    build_s = None
    if hnsw:
        t = time.perf_counter()
        store.build_hnsw(m=m, ef_construction=ef_construction)
        build_s = time.perf_counter() - t
        print(f"HNSW (M={m}, efConstruction={ef_construction}) built in {build_s:.1f}s", flush=True)
    store.close()
    t = time.perf_counter()
    index = Index.open(folder)
    open_s = time.perf_counter() - t
    print(f"index written in {write_s:.1f}s, reopened in {open_s:.1f}s", flush=True)

    row: dict = {"n": n, "dim": DIM, "data": data, "queries": n_queries, "write_s": write_s,
                 "open_s": open_s, "hnsw_build_s": build_s}

    raw = faiss.IndexFlatIP(DIM)
    raw.add(vectors)
    truth_scores, truth = raw.search(queries, K)
    raw_exact, umr_exact = timed_pair(lambda q: raw.search(q, K),
                                      lambda q: index.search_vectors(q, k=K, method="exact"), queries)
    got = [[int(r.id[1:]) for r in res] for res in index.search_vectors(queries, k=K, method="exact")]
    row["exact"] = {"raw_faiss": raw_exact, "umr": umr_exact, "ratio_qps": umr_exact["qps"] / raw_exact["qps"],
                    "same_ids_as_raw": bool(recall_at_k(np.array(got), truth) == 1.0)}
    t = time.perf_counter()
    raw.search(queries, K)
    row["exact"]["raw_faiss_batch_qps"] = n_queries / (time.perf_counter() - t)
    t = time.perf_counter()
    index.search_vectors(queries, k=K, method="exact")
    row["exact"]["umr_batch_qps"] = n_queries / (time.perf_counter() - t)
    print(f"exact   raw {raw_exact['qps']:8.1f} QPS  umr {umr_exact['qps']:8.1f} QPS  "
          f"ratio {row['exact']['ratio_qps']:.3f}", flush=True)
    raw = None  # free the flat copy before the HNSW part (1M x 384 floats)

    if hnsw:
        graph = index.store.hnsw_graph()
        row["hnsw"] = []
        for ef in ef_values:
            params = faiss.SearchParametersHNSW(efSearch=ef)
            raw_h, umr_h = timed_pair(lambda q: graph.search(q, K, params=params),
                                      lambda q: index.search_vectors(q, k=K, ef_search=ef), queries, rounds=5)
            found = np.array([[int(r.id[1:]) for r in res]
                              for res in index.search_vectors(queries, k=K, ef_search=ef)])
            rec = recall_at_k(found, truth)
            entry = {"ef_search": ef, "recall_at_10": rec, "raw_faiss": raw_h, "umr": umr_h,
                     "ratio_qps_vs_raw": umr_h["qps"] / raw_h["qps"],
                     "speedup_vs_umr_exact": umr_h["qps"] / umr_exact["qps"]}
            row["hnsw"].append(entry)
            print(f"hnsw ef={ef:<4d} recall@10 {rec:.3f}  raw {raw_h['qps']:8.1f} QPS  umr {umr_h['qps']:8.1f} QPS"
                  f"  x{entry['speedup_vs_umr_exact']:.1f} vs exact", flush=True)
    index.close()
    shutil.rmtree(folder, ignore_errors=True)
    return row


def print_table(rows: list[dict]) -> None:
    print("\n| data | n | search | recall@10 | raw FAISS QPS | umr QPS | umr/raw | umr p50 ms | umr p99 ms | vs exact |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e = r["exact"]
        print(f"| {r['data']} | {r['n']:,} | exact | 1.000 | {e['raw_faiss']['qps']:.1f} | {e['umr']['qps']:.1f} | "
              f"{e['ratio_qps']:.2f} | {e['umr']['p50_ms']:.2f} | {e['umr']['p99_ms']:.2f} | 1.0x |")
        for h in r.get("hnsw", []):
            print(f"| {r['data']} | {r['n']:,} | hnsw ef={h['ef_search']} | {h['recall_at_10']:.3f} | "
                  f"{h['raw_faiss']['qps']:.1f} | {h['umr']['qps']:.1f} | {h['ratio_qps_vs_raw']:.2f} | "
                  f"{h['umr']['p50_ms']:.2f} | {h['umr']['p99_ms']:.2f} | {h['speedup_vs_umr_exact']:.1f}x |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k and 100k vectors instead of 100k and 1M")
    parser.add_argument("--sizes", type=int, nargs="*", default=None)
    parser.add_argument("--queries", type=int, default=None, help="queries per size (default 200; 1M: 100)")
    parser.add_argument("--m", type=int, default=32, help="HNSW M")
    parser.add_argument("--ef-construction", type=int, default=80)
    parser.add_argument("--ef", type=int, nargs="*", default=[16, 32, 64, 128])
    parser.add_argument("--work", type=Path, default=None, help="where the temporary indexes go")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()

    import faiss

    sizes = args.sizes or ([10_000, 100_000] if args.quick else [100_000, 1_000_000])
    work = args.work or Path(tempfile.mkdtemp(prefix="umr-bench-search-"))
    rows = []
    started = time.time()
    for n in sizes:
        nq = args.queries or (100 if n >= 1_000_000 else 200)
        rows.append(run_size(n, "embedding-like", nq, work, hnsw=True, m=args.m,
                             ef_construction=args.ef_construction, ef_values=args.ef))
    # the worst case for graph indexes: uniformly random directions, at the smallest size
    rows.append(run_size(sizes[0], "uniform", args.queries or 200, work, hnsw=True, m=args.m,
                         ef_construction=args.ef_construction, ef_values=args.ef))
    print_table(rows)
    output = args.output or ROOT / "benchmarks" / "results" / ("search.quick.json" if args.quick else "search.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    meta = {"mode": "quick" if args.quick else "full", "k": K, "hnsw_m": args.m,
            "hnsw_ef_construction": args.ef_construction, "faiss": faiss.__version__,
            "faiss_threads": faiss.omp_get_max_threads(), "cpu_count": os.cpu_count(),
            "machine": platform.platform(), "seconds": time.time() - started,
            "note": "single-query latency, raw and umr interleaved query by query; QPS = 1 / mean latency"}
    output.write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(f"\nwrote {output}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
