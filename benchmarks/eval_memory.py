"""Evaluator memory: does ``umr eval`` hold one pool's vectors, or every vector it has cached?

Fills an evaluation cache with N candidates of dimension D (random unit vectors from a cheap
stand-in embedder: no model, the memory is all in the vectors), then, each in a fresh process
that reopens the cache as a resumed run does:

* **full pool** — queries against all N candidates (the pool's rows are contiguous in the
  cache: searched from the memory map, FAISS's copy is the only one);
* **half pool** — queries against every other candidate, in reverse (rows gathered: one copy).

Reported: the process's peak resident memory above its start (``VmHWM`` − RSS after imports)
as a multiple of the pool's float32 vector bytes. The target, from the issue: at most one pool's
vectors plus one copy for search, i.e. ≤ 2× the pool's bytes + 200 MB (file-backed map pages
count as resident once read). Defaults N=1,000,000, D=384 (1.5 GB on disk); ``--quick`` uses
N=200,000, D=256. Prints a table and writes ``benchmarks/results/eval_memory.json``
(``eval_memory.quick.json`` with ``--quick``). Never asserted in tests.

    python benchmarks/eval_memory.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from umr.models.base import Embedder


class RandomEmbedder(Embedder):
    """Deterministic random vectors per item id: embedding costs nothing, memory is all vectors."""

    name = "random"
    batch_size = 65536

    def __init__(self, dim: int):
        self.dim = dim

    def _cost(self, item):
        return 1

    def _embed_batch(self, items):
        return np.random.default_rng(int(items[0].id[1:])).standard_normal((len(items), self.dim), np.float32)


def make_task(n: int, half: bool, name: str):
    from umr.data.tasks import RetrievalTask
    from umr.core.items import Item, Modality

    pool = [Item.candidate(text=f"t{i}", id=f"d{i}") for i in range(n)]
    if half:
        pool = pool[::-2]
    qids = [int(c.id[1:]) for c in pool[:50]]
    queries = [Item.query(text=f"t{i}", id=f"q{i}") for i in qids]
    return RetrievalTask(name=name, queries=queries, candidates=pool, qrels={f"q{i}": {f"d{i}": 1} for i in qids},
                         category="T→T", target_modality=Modality.TEXT, pool="corpus")


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(output: str, n: int, dim: int, phase: str) -> None:
    from umr.eval import EvalConfig, Evaluator

    config = EvalConfig(depth=10, commit_every=65536)
    if phase == "build":
        Evaluator(RandomEmbedder(dim), output=output, config=config).evaluate_task(make_task(n, False, "build"))
        return
    task = make_task(n, phase == "half", phase)
    start = _kib("VmRSS")
    Evaluator(RandomEmbedder(dim), output=output, config=config).evaluate_task(task)
    print(json.dumps({"start_kib": start, "peak_kib": _kib("VmHWM"), "pool_rows": len(task.candidates)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N=200,000, D=256")
    parser.add_argument("--child", nargs=4, metavar=("OUTPUT", "N", "DIM", "PHASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        output, n, dim, phase = args.child
        child(output, int(n), int(dim), phase)
        return
    n, dim = (200_000, 256) if args.quick else (1_000_000, 384)

    def run(output, phase):
        done = subprocess.run([sys.executable, __file__, "--child", output, str(n), str(dim), phase],
                              check=True, capture_output=True, text=True)
        return json.loads(done.stdout.strip().splitlines()[-1]) if phase != "build" else None

    rows = {}
    with tempfile.TemporaryDirectory(prefix="umr-eval-memory-") as tmp:
        output = str(Path(tmp) / "out")
        run(output, "build")
        for phase in ("full", "half"):
            got = run(output, phase)
            pool_bytes = got["pool_rows"] * dim * 4
            grown = (got["peak_kib"] - got["start_kib"]) * 1024
            rows[phase] = {"pool_rows": got["pool_rows"], "pool_vector_mb": round(pool_bytes / 2**20, 1),
                           "peak_above_start_mb": round(grown / 2**20, 1), "ratio": round(grown / pool_bytes, 3),
                           "meets_target": grown <= 2 * pool_bytes + 200 * 2**20}
    print(f"umr eval memory: cache of {n:,} x {dim} float32 ({n * dim * 4 / 2**20:,.0f} MB)")
    for phase, row in rows.items():
        print(f"  {phase} pool ({row['pool_rows']:,} rows, {row['pool_vector_mb']} MB): peak +{row['peak_above_start_mb']} MB"
              f" = {row['ratio']:.2f}x the pool's vectors (target <= 2x + 200 MB: "
              f"{'met' if row['meets_target'] else 'NOT met'})")
    result = {"candidates": n, "dim": dim, "phases": rows, "quick": args.quick,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    out = Path(__file__).parent / "results" / ("eval_memory.quick.json" if args.quick else "eval_memory.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
