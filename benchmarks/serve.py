"""Load and latency of ``umr serve``'s /v1/embeddings: micro-batching on against one request at a time.

32 concurrent clients (one sentence per request, each on its own keep-alive connection) for
30 s against a server on 127.0.0.1 (a separate process, so clients and server do not share a
GIL), for the tiny random GME and for minilm, with micro-batching on and off in the same run;
then a model with no forward pass (``null``: what the HTTP side alone can serve). The server
is set up as ``umr serve`` sets it up (torch threads: all cores but one). Reports throughput,
p50/p99 latency and errors; the ratio is batching-on / batching-off throughput.

Where the time goes, per request: the model thread's wall time and CPU (the batcher's counters
in ``/v1/stats``), the rest of the server's CPU (HTTP) and the load generator's CPU. The
clients speak HTTP/1.1 over raw asyncio streams: httpx spent 8.3 ms of CPU per request
(against the null model it capped the run at 119 req/s; these clients: 0.4 ms, 900 req/s),
which on 2 shared cores was the old benchmark's ceiling. Loopback only, bounded in time.

    python benchmarks/serve.py            # 5 runs x 30 s
    python benchmarks/serve.py --quick    # 5 runs x 5 s
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


def null_model():
    """An embedder with no forward pass (constant vectors): what the server's HTTP side alone can do."""
    import torch

    from umr.models.base import Embedder

    class Null(Embedder):
        name, dim = "null", 384

        def _cost(self, item):
            return 1

        def _embed_batch(self, items):
            return torch.ones(len(items), self.dim)

    return Null()


def _serve(model_name: str, port: int, batching: bool, ready) -> None:
    import uvicorn

    import umr
    from umr.serve import create_app
    from umr.serve.batcher import server_torch_threads

    model = null_model() if model_name == "null" else umr.load_model(model_name)
    app = create_app(model, batching=batching, torch_threads=server_torch_threads())
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


class Connection:
    """One keep-alive HTTP/1.1 connection: a request at a time, the answer read by its length."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def call(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in lines[1:] if ":" in line)
        length = int(next((v for k, v in headers.items() if k.strip().lower() == "content-length"), "0"))
        return int(lines[0].split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


async def load(port: int, server_pid: int, clients: int, seconds: float, sentences: list[str]) -> dict:
    latencies: list[float] = []
    errors = 0

    async def client(i: int, deadline: float) -> None:
        nonlocal errors
        rng = random.Random(i)
        connection = Connection(port)
        while time.perf_counter() < deadline:
            body = json.dumps({"input": rng.choice(sentences)}).encode()
            t0 = time.perf_counter()
            try:
                status, payload = await asyncio.wait_for(connection.call("POST", "/v1/embeddings", body), 120)
                ok = status == 200 and len(json.loads(payload)["data"]) == 1
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, KeyError):
                connection.close()
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
        connection.close()

    async def warm_up() -> None:  # the first forward passes (lazy init, allocator) stay out of the numbers
        await asyncio.gather(*[client(i, time.perf_counter() + 1.0) for i in range(clients)])
        latencies.clear()

    async def stats() -> dict:
        connection = Connection(port)
        try:
            return json.loads((await connection.call("GET", "/v1/stats"))[1])["batcher"]
        finally:
            connection.close()

    await warm_up()
    warm_up_errors, errors = errors, 0
    before, server_cpu, client_cpu = await stats(), cpu_seconds(server_pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*[client(i, started + seconds) for i in range(clients)])
    elapsed = time.perf_counter() - started
    client_cpu, server_cpu = time.process_time() - client_cpu, cpu_seconds(server_pid) - server_cpu
    after = await stats()
    n = max(len(latencies), 1)
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    calls = after["embed_calls"] - before["embed_calls"]
    model_cpu = after["model_cpu_seconds"] - before["model_cpu_seconds"]
    return {"requests": len(latencies), "errors": errors, "warm_up_errors": warm_up_errors, "seconds": round(elapsed, 2),
            "throughput_rps": round(len(latencies) / elapsed, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "embed_calls": calls, "items_per_call": round((after["items"] - before["items"]) / max(calls, 1), 1),
            # per request: the model thread's wall time and CPU (tokenising, forward, splitting the
            # batch), the rest of the server's CPU (HTTP, JSON, pydantic, the event loop), and the
            # load generator's CPU
            "model_ms_per_request": round((after["model_seconds"] - before["model_seconds"]) * 1000 / n, 2),
            "model_cpu_ms_per_request": round(model_cpu * 1000 / n, 2),
            "http_cpu_ms_per_request": round((server_cpu - model_cpu) * 1000 / n, 2),
            "client_cpu_ms_per_request": round(client_cpu * 1000 / n, 2)}


def run_one(model_name: str, batching: bool, clients: int, seconds: float, sentences: list[str]) -> dict:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    port = free_port()
    proc = ctx.Process(target=_serve, args=(model_name, port, batching, ready), daemon=True)
    proc.start()
    try:
        if not ready.wait(300):
            raise RuntimeError(f"the server for {model_name} did not start")
        return asyncio.run(load(port, proc.pid, clients, seconds, sentences))
    finally:
        proc.terminate()
        proc.join(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 s per run instead of 30")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--model", choices=["tiny-gme", "minilm"], action="append", default=None,
                        help="run only this model (repeatable; default: both)")
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    rng = random.Random(0)
    sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 30))) for _ in range(500)]

    from umr.testing import write_tiny_gme

    tmp = tempfile.mkdtemp(prefix="umr-serve-bench-")
    models = {"tiny-gme": str(write_tiny_gme(Path(tmp) / "tiny-gme")), "minilm": "minilm"}
    models = {label: name for label, name in models.items() if label in (args.model or models)}
    load_at_start = os.getloadavg()[0]
    rows = []
    runs = [(label, name, batching) for label, name in models.items() for batching in (True, False)]
    for label, name, batching in runs + [("null", "null", True)]:  # last: the HTTP side's own ceiling
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
    print(f"{'model':9s} {'batching':>8s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>6s} "
          f"{'items/call':>10s} {'model ms':>9s} {'model cpu':>9s} {'http cpu':>9s} {'client cpu':>10s}"
          f"   (ms per request)")
    for r in rows:
        print(f"{r['model']:9s} {'on' if r['batching'] else 'off':>8s} {r['throughput_rps']:8.1f} {r['p50_ms']:8.1f} "
              f"{r['p99_ms']:8.1f} {r['errors']:6d} {r['items_per_call']:10.1f} {r['model_ms_per_request']:9.2f} "
              f"{r['model_cpu_ms_per_request']:9.2f} {r['http_cpu_ms_per_request']:9.2f} "
              f"{r['client_cpu_ms_per_request']:10.2f}")
    for label, ratio in ratios.items():
        print(f"{label}: micro-batching gives {ratio}x the throughput of one request at a time")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"clients": args.clients, "seconds": seconds, "quick": args.quick,
                                   "cpus": os.cpu_count(), "platform": platform.platform(),
                                   "load_average": {"start": load_at_start, "end": os.getloadavg()[0]},
                                   "runs": rows, "throughput_ratio_on_vs_off": ratios}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
