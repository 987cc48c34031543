"""Build time and memory of the embedded index as it grows, vectors added directly (no model).

Bars (issue 8.8): building costs O(N) — the time per 100k rows stays flat from 100k to 1M —
and the resident memory of a process that opens the index and searches it stays within
1.2x the vector bytes + 200 MB.

For each step of ``--step`` rows (full: 100k up to 1M; ``--quick``: 10k up to 100k):

* build: the seconds ``FlatStore.commit`` takes for those rows, in commits of ``--commit`` rows
  (each commit writes and fsyncs its files and swaps the manifest, as ``umr index`` does), with
  the searchable in-memory copy kept current (one search after each step); against a baseline
  measured in the same run, commit by commit in turn: writing the same vectors and record lines
  to files with the same fsyncs and nothing else. ``flat`` is this step's time over the first
  step's (1.0 = O(N) building);
* memory: a fresh process opens the index and runs 20 exact searches; its resident memory
  (VmRSS, and the peak VmHWM) against the bound, and the index's own share (RSS after minus
  before opening: the baseline is the interpreter with ``umr`` imported, which today includes
  torch) against the vector bytes.

    .venv/bin/python benchmarks/index_scale.py --quick   # ~1 min
    .venv/bin/python benchmarks/index_scale.py           # 100k..1M x 384 (~1.5 GB of vectors)

Prints a table and writes ``benchmarks/results/index_scale.json`` (``index_scale.quick.json``
with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MB = 1024 * 1024


def records(start: int, stop: int) -> list[dict]:
    """Records shaped like ``umr index``'s: id, content hash, path, a text snippet, metadata."""
    out = []
    for i in range(start, stop):
        folder = f"part{i % 97:02d}"
        out.append({"id": f"{folder}/doc-{i:07d}.txt", "hash": f"{i * 2654435761 % 2**128:032x}",
                    "modality": "text", "path": f"/data/corpus/{folder}/doc-{i:07d}.txt",
                    "text": f"document {i} " + "lorem ipsum dolor sit amet " * 6, "via": "text",
                    "meta": {"file": f"{folder}/doc-{i:07d}.txt", "folder": folder, "ext": "txt"},
                    "source": "/data/corpus"})
    return out


def vector_pool(dim: int, rows: int = 50_000) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def raw_write(folder: Path, number: int, recs: list[dict], vectors: np.ndarray) -> None:
    """The floor of one commit: the records serialised, the same bytes in three files, fsynced,
    and a small manifest."""
    from umr.index.base import json_line

    lines = [json_line(r).encode() for r in recs]
    for name, data in ((f"{number}.jsonl", b"".join(line + b"\n" for line in lines)),
                       (f"{number}.keys", b"k" * (40 * len(lines))), (f"{number}.npy", vectors.tobytes()),
                       ("manifest.json", b"{}")):
        with open(folder / name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    fd = os.open(folder, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


_MEMORY_PROBE = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, faiss
from umr.index import FlatStore

def status():
    fields = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields

before = status()
t = time.perf_counter()
store = FlatStore.open(sys.argv[2])
opened = status()
open_s = time.perf_counter() - t
queries = np.random.default_rng(1).standard_normal((20, store.dim), dtype=np.float32)
t = time.perf_counter()
first = store.search(queries[:1], 10)
first_s = time.perf_counter() - t
t = time.perf_counter()
for q in queries:
    store.search(q, 10)
search_ms = (time.perf_counter() - t) / len(queries) * 1000
assert len(first[0]) == 10
after = status()
print(json.dumps({"rss_before": before["VmRSS"], "rss_open": opened["VmRSS"], "rss_after": after["VmRSS"],
                  "peak": after["VmHWM"], "open_s": open_s, "first_search_s": first_s,
                  "search_ms": search_ms, "rows": len(store)}))
"""


def memory_probe(folder: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(ROOT / "src"), str(folder)],
                         capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> list[dict]:
    from umr.index import FlatStore

    work = args.work or Path(tempfile.mkdtemp(prefix="umr-bench-scale-"))
    folder, raw = work / "index", work / "raw"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    pool = vector_pool(args.dim)
    store = FlatStore.create(folder, dim=args.dim, config={"model": {"name": "synthetic", "dim": args.dim},
                                                          "method": "exact"})
    queries = vector_pool(args.dim, 4)
    rows_done, number, table = 0, 0, []
    try:
        while rows_done < args.max:
            store_s = raw_s = 0.0
            step_end = min(rows_done + args.step, args.max)
            while rows_done < step_end:
                stop = min(rows_done + args.commit, step_end)
                recs = records(rows_done, stop)
                vectors = pool[np.arange(rows_done, stop) % len(pool)]
                number += 1
                first = number % 2  # alternate which goes first, so both see the same load
                for which in ((0, 1) if first else (1, 0)):
                    t = time.perf_counter()
                    if which == 0:
                        store.commit(recs, vectors)
                        store_s += time.perf_counter() - t
                    else:
                        raw_write(raw, number, recs, vectors)
                        raw_s += time.perf_counter() - t
                rows_done = stop
            t = time.perf_counter()
            hits = store.search(queries, 10)
            search_s = time.perf_counter() - t
            assert all(len(h) == 10 for h in hits)
            mem = memory_probe(folder)
            vector_bytes = rows_done * args.dim * 4
            bound = 1.2 * vector_bytes + 200 * MB
            own = mem["rss_after"] - mem["rss_before"]
            row = {"rows": rows_done, "step_rows": args.step, "build_s": store_s, "raw_write_s": raw_s,
                   "build_over_raw": store_s / raw_s, "writer_search_s": search_s,
                   "vector_mb": vector_bytes / MB, "rss_mb": mem["rss_after"] / MB,
                   "rss_baseline_mb": mem["rss_before"] / MB, "rss_after_open_mb": mem["rss_open"] / MB,
                   "peak_mb": mem["peak"] / MB, "bound_mb": bound / MB, "within_bound": mem["rss_after"] <= bound,
                   "index_mb": own / MB, "index_over_vectors": own / vector_bytes, "index_within_bound": own <= bound,
                   "open_s": mem["open_s"], "first_search_s": mem["first_search_s"],
                   "search_ms": mem["search_ms"]}
            row["flat"] = store_s / table[0]["build_s"] if table else 1.0
            table.append(row)
            print(f"{rows_done:>9,} rows  build {store_s:6.2f}s/step (raw {raw_s:6.2f}s, x{row['build_over_raw']:.2f}, "
                  f"flat {row['flat']:.2f})  RSS {row['rss_mb']:7.0f} MB of bound {row['bound_mb']:7.0f} MB, "
                  f"index's own {row['index_mb']:.0f} MB for {row['vector_mb']:.0f} MB of vectors", flush=True)
            for path in raw.iterdir():  # the baseline's files are only for timing
                path.unlink()
    finally:
        store.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return table


def print_table(table: list[dict], args) -> None:
    print(f"\n{args.dim}-d float32 vectors, commits of {args.commit:,} rows, steps of {args.step:,}\n")
    print("| rows | build s / step | raw write s / step | build / raw | flat (vs step 1) | "
          "vectors MB | RSS after open+search MB | bound MB | within | interpreter MB | index's own MB | "
          "own / vectors | peak MB | search ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in table:
        print(f"| {r['rows']:,} | {r['build_s']:.2f} | {r['raw_write_s']:.2f} | {r['build_over_raw']:.2f} | "
              f"{r['flat']:.2f} | {r['vector_mb']:.0f} | {r['rss_mb']:.0f} | {r['bound_mb']:.0f} | "
              f"{'yes' if r['within_bound'] else 'NO'} | {r['rss_baseline_mb']:.0f} | {r['index_mb']:.0f} | "
              f"{r['index_over_vectors']:.2f} | {r['peak_mb']:.0f} | {r['search_ms']:.1f} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k steps up to 100k rows")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--step", type=int, default=None, help="rows per measured step (default 100k; quick 10k)")
    parser.add_argument("--max", type=int, default=None, help="rows in the end (default 1M; quick 100k)")
    parser.add_argument("--commit", type=int, default=1000, help="rows per commit")
    parser.add_argument("--work", type=Path, default=None, help="where the temporary index goes")
    parser.add_argument("--keep", action="store_true", help="keep the index folder")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.step = args.step or (10_000 if args.quick else 100_000)
    args.max = args.max or (100_000 if args.quick else 1_000_000)
    started = time.time()
    table = run(args)
    print_table(table, args)
    steady = [r["flat"] for r in table]
    result = {"benchmark": "index_scale", "quick": args.quick, "dim": args.dim, "commit_rows": args.commit,
              "step_rows": args.step, "rows": args.max, "seconds": time.time() - started,
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()},
              "build_flat_max": max(steady), "build_flat_last": steady[-1],
              "memory_within_bound": all(r["within_bound"] for r in table),
              "index_memory_within_bound": all(r["index_within_bound"] for r in table), "steps": table}
    out = args.output or ROOT / "benchmarks" / "results" / ("index_scale.quick.json" if args.quick else "index_scale.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nbuild time per step, last / first: {steady[-1]:.2f} (max {max(steady):.2f}); "
          f"RSS within 1.2x vectors + 200 MB at every size: {result['memory_within_bound']} "
          f"(the index's own share: {result['index_memory_within_bound']}); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
