"""Load and latency of ``umr serve``'s /v1/embeddings: micro-batching on against one request at a time.

32 concurrent clients (one sentence per request) for 30 s against a server on 127.0.0.1 (a
separate process, so clients and server do not share a GIL), for the tiny random GME and for
minilm, with micro-batching on and off in the same run. Reports throughput, p50/p99 latency and
errors; the ratio is batching-on / batching-off throughput. Loopback only, bounded in time.

    python benchmarks/serve.py            # 4 runs x 30 s
    python benchmarks/serve.py --quick    # 4 runs x 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
WORDS = ("a the of to in on with for by from and or is are was this that image photo dog cat car bird flower "
         "tree house street city river mountain sky sea red green blue small large old new running man woman "
         "child people table window road bridge train boat what which where who how why history").split()


def _serve(model_name: str, port: int, batching: bool, ready) -> None:
    import uvicorn

    import umr
    from umr.serve import create_app

    model = umr.load_model(model_name)
    model.embed([umr.Item(text="warm up")], show_progress_bar=False)
    app = create_app(model, batching=batching)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", access_log=False)
    server = uvicorn.Server(config)
    original = server.startup

    async def startup(*args, **kwargs):
        await original(*args, **kwargs)
        ready.set()
    server.startup = startup
    server.run()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def load(url: str, clients: int, seconds: float, sentences: list[str]) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(i: int, http) -> None:
        nonlocal errors
        rng = random.Random(i)
        while time.perf_counter() < deadline:
            body = {"input": rng.choice(sentences), "model": None}
            t0 = time.perf_counter()
            try:
                r = await http.post(url, json=body)
                ok = r.status_code == 200 and len(r.json()["data"]) == 1
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*[client(i, http) for i in range(clients)])
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 2),
            "throughput_rps": round(len(latencies) / elapsed, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def run_one(model_name: str, batching: bool, clients: int, seconds: float, sentences: list[str]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    port = free_port()
    proc = ctx.Process(target=_serve, args=(model_name, port, batching, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(300):
            raise RuntimeError(f"the server for {model_name} did not start")
        return asyncio.run(load(f"http://127.0.0.1:{port}/v1/embeddings", clients, seconds, sentences))
    finally:
        proc.terminate()
        proc.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per run instead of 30")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None)
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))) for _ in range(500)]

    from umr.models.gme import write_tiny_gme

    tmp = tempfile.mkdtemp(prefix="umr-serve-bench-")
    models = {"tiny-gme": str(write_tiny_gme(Path(tmp) / "tiny-gme")), "minilm": "minilm"}
    rows = []
    for label, name in models.items():
        for batching in (True, False):
            result = run_one(name, batching, args.clients, seconds, sentences)
            rows.append({"model": label, "batching": batching, **result})
            print(f"{label:9s} batching={'on ' if batching else 'off'}  {result['throughput_rps']:8.1f} req/s  "
                  f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  errors {result['errors']}",
                  flush=True)
    ratios = {}
    for label in models:
        on = next(r for r in rows if r["model"] == label and r["batching"])
        off = next(r for r in rows if r["model"] == label and not r["batching"])
        ratios[label] = round(on["throughput_rps"] / max(off["throughput_rps"], 1e-9), 2)
    print()
    print(f"{'model':9s} {'batching':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s}")
    for r in rows:
        print(f"{r['model']:9s} {'on' if r['batching'] else 'off':>8s} {r['throughput_rps']:8.1f} {r['p50_ms']:8.1f} "
              f"{r['p99_ms']:8.1f} {r['errors']:6d}")
    for label, ratio in ratios.items():
        print(f"{label}: micro-batching gives {ratio}x the throughput of one request at a time")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"clients": args.clients, "seconds": seconds, "quick": args.quick,
                                   "cpus": os.cpu_count(), "platform": platform.platform(),
                                   "runs": rows, "throughput_ratio_on_vs_off": ratios}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
