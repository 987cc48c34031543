"""Every benchmark in one command and one JSON: what each measures, its baseline, its headline
numbers, whether each target is met, how long it took, how it exited, and the machine.

    python benchmarks/run_all.py            # every benchmark, full size (hours on 2 cores)
    python benchmarks/run_all.py --quick    # every benchmark's --quick run (minutes)
    python benchmarks/run_all.py --only search startup --quick
    python benchmarks/run_all.py --list     # names, what each measures, targets

Each benchmark runs as its own subprocess (``python benchmarks/NAME.py [--quick]``), one after
another, so one that fails is reported as failed and the rest go on. Its result JSON (each script
writes its own under ``benchmarks/results/``) is read back only if this run wrote it, and its
headline numbers are picked out as :data:`BENCHMARKS` says. Everything goes to
``benchmarks/results/all.json`` (``all.quick.json`` with ``--quick``) and a table is printed.
Run it under the shared lock on a machine others use:
``flock /tmp/umr-bench.lock env PYTHONPATH=src .venv/bin/python benchmarks/run_all.py --quick``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: the last lines of a failed benchmark's stderr kept in all.json
ERROR_LINES = 20


def at(*path: str | int) -> Callable[[dict], Any]:
    """A getter for ``doc[path[0]][path[1]]...``: None where the result has no such entry (a
    benchmark that changed its output, or a row it did not run), never an exception."""
    def get(doc: dict) -> Any:
        for key in path:
            try:
                doc = doc[key]
            except (KeyError, IndexError, TypeError):
                return None
        return doc
    return get


@dataclass(frozen=True)
class Headline:
    """One number of a benchmark's result, and its target when the issues set one."""

    label: str
    value: Callable[[dict], Any]
    #: the bar: ``value >= target`` (``at_least``) or ``value <= target``; None: reported only
    target: float | None = None
    at_least: bool = True
    unit: str = "x"

    def judge(self, value: Any) -> bool | None:
        if self.target is None or not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        return value >= self.target if self.at_least else value <= self.target

    def spell_target(self) -> str:
        return "" if self.target is None else f"{'>=' if self.at_least else '<='} {self.target:g}{self.unit}"


@dataclass(frozen=True)
class Check:
    """A target the benchmark judges itself (it writes whether it was met, e.g. ``meets_target``)."""

    label: str
    met: Callable[[dict], Any]


@dataclass(frozen=True)
class Benchmark:
    name: str
    what: str
    baseline: str
    #: the result files the script writes (full run, ``--quick`` run), in ``results``
    result: tuple[str, str]
    headlines: tuple[Headline, ...] = ()
    checks: tuple[Check, ...] = ()
    #: the script (default ``benchmarks/NAME.py``)
    script: Path | None = None

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, str(self.script or HERE / f"{self.name}.py")] + (["--quick"] if quick else [])


def _mean(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return sum(values) / len(values) if values else None


def _miniature(run: str, metric: str) -> Callable[[dict], float | None]:
    """The miniature training's mean of ``metric`` over its tasks after training ``run``."""
    return lambda doc: _mean(r.get(metric) for r in (at("results", run)(doc) or {}).values())


def _search(data: str, pick: Callable[[dict], Any]) -> Callable[[dict], Any]:
    """``pick`` applied to the largest corpus of ``data`` vectors the search benchmark measured."""
    def get(doc: dict) -> Any:
        rows = [r for r in doc.get("results", []) if r.get("data") == data]
        return pick(max(rows, key=lambda r: r["n"])) if rows else None
    return get


def _hnsw(ef: int, key: str) -> Callable[[dict], Any]:
    return _search("embedding-like", lambda row: next((h[key] for h in row.get("hnsw", []) if h["ef_search"] == ef),
                                                      None))


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "embed_throughput", "items/s of umr's embedding path, equal outputs (max |delta| reported)",
        "GME and Qwen3-VL: a per-batch loop written as their references call transformers; minilm: "
        "sentence-transformers encode (float32)",
        ("embed_throughput.json", "embed_throughput.json"),
        (Headline("GME vs reference loop", at("gme", "ratio"), 2.0),
         Headline("Qwen3-VL vs reference loop", at("qwen3vl", "ratio"), 1.5),
         Headline("minilm vs sentence-transformers", at("minilm", "ratio"), 3.0))),
    Benchmark(
        "video_throughput", "Qwen3-VL-Embedding video items/s and peak memory (seeking decoder, prefetching "
        "loader), equal outputs (max |delta| reported)",
        "the reference-style loop: every frame decoded, then sampled, one item at a time (same model, clips, run)",
        ("video_throughput.json", "video_throughput.quick.json"),
        (Headline("video items/s vs reference loop", at("qwen3vl_video", "ratio")),
         Headline("peak RSS rise, umr / reference", at("qwen3vl_video", "memory_ratio"), unit=""),
         Headline("max |delta| to the reference", at("qwen3vl_video", "max_abs_delta"), 1e-5, at_least=False,
                  unit=""))),
    Benchmark(
        "text_speed", "minilm's text path side by side: umr float32/bf16, torch.compile, int8, ONNX Runtime, with MFU",
        "sentence-transformers encode with its float32 defaults, same sentences, same run",
        ("text_speed.json", "text_speed.json"),
        (Headline("umr float32 vs sentence-transformers", at("umr_fp32", "ratio"), 3.0),
         Headline("umr float32 MFU", at("umr_fp32", "mfu"), unit=""),
         Headline("umr bf16 worst cosine", at("umr_bf16", "worst_cosine"), 0.999, unit=""),
         # issue 14's bar (>= 40%) means native bf16 matmuls; against an emulated peak it is no bar
         Headline("umr bf16 MFU (same-dtype peak)", at("umr_bf16", "mfu"), unit=""),
         Headline("ONNX Runtime fused vs sentence-transformers", at("onnxruntime_fused", "ratio")))),
    Benchmark(
        "search", "queries/s of the embedded index: exact vs raw FAISS, HNSW recall and speed",
        "raw FAISS (IndexFlatIP, and the same HNSW graph searched directly) on the same vectors",
        ("search.json", "search.quick.json"),
        (Headline("exact vs raw FAISS", _search("embedding-like", at("exact", "ratio_qps"))),
         Headline("HNSW ef32 recall@10", _hnsw(32, "recall_at_10"), unit=""),
         Headline("HNSW ef32 vs exact", _hnsw(32, "speedup_vs_umr_exact")),
         Headline("HNSW ef128 recall@10", _hnsw(128, "recall_at_10"), unit=""))),
    Benchmark(
        "quantized", "compact vectors (int8, binary + rescoring): recall@10, queries/s and RssAnon on 1M vectors",
        "float32 exact search of the same vectors (faiss flat and BLAS blocks, the faster), each in a fresh process",
        ("quantized.json", "quantized.quick.json"),
        # the targets are held by what `umr index --quantize` ships: codes + rescoring (the codes-alone
        # rows, --rescore-k 0, are reported beside them)
        (Headline("--quantize int8 (+ rescore) recall@10", at("configs", "int8-rescore", "recall_at_k"), 0.99,
                  unit=""),
         Headline("--quantize int8 memory vs float32", at("configs", "int8-rescore", "memory_vs_float"), 0.3,
                  at_least=False),
         Headline("int8 codes alone recall@10", at("configs", "int8", "recall_at_k"), unit=""),
         Headline("--quantize binary (+ rescore) recall@10", at("configs", "binary-rescore", "recall_at_k"), 0.95,
                  unit=""),
         Headline("--quantize binary memory vs float32", at("configs", "binary-rescore", "memory_vs_float"), 0.1,
                  at_least=False),
         Headline("--quantize binary q/s vs float32, batched", at("configs", "binary-rescore", "batch_vs_float"), 2.0),
         Headline("--quantize binary q/s vs float32, one at a time",
                  at("configs", "binary-rescore", "single_vs_float"), 2.0))),
    Benchmark(
        "late_interaction", "multi-vector search: a MUVERA first stage + exact MaxSim rerank against exact MaxSim "
        "on 20k documents x 256 tokens x 128 dims; bytes per stored token; the MaxSim scan rate",
        "exact MaxSim over every document (the same engine, the same queries), and the memory read bandwidth "
        "measured in the same run",
        ("late_interaction.json", "late_interaction.quick.json"),
        (Headline("first stage recall@10 of exact MaxSim (fastest depth reaching 0.95)", at("best_first_stage", "recall_at_10"), 0.95, unit=""),
         Headline("first stage q/s vs exact MaxSim", at("best_first_stage", "speedup_vs_exact"), 20.0),
         Headline("exact MaxSim scan, share of memory bandwidth", at("exact", "single_scan_share_of_bandwidth"),
                  unit=""))),
    Benchmark(
        "index_scale", "build time per step and resident memory of the embedded index as it grows",
        "writing the same vectors and records with the same fsyncs and nothing else; the vector bytes",
        ("index_scale.json", "index_scale.quick.json"),
        (Headline("slowest step vs first", at("build_flat_max")),
         Headline("index memory / vector bytes", at("steps", -1, "index_over_vectors"))),
        (Check("index memory <= 1.2x vectors + 200 MB", at("index_memory_within_bound")),
         Check("process memory <= 1.2x vectors + 200 MB, largest size", at("steps", -1, "within_bound")),
         Check("process memory <= 1.2x vectors + 200 MB, every size", at("memory_within_bound")))),
    Benchmark(
        "eval_cost", "wall time of a whole umr eval (embed, search, metrics, runs, reports)",
        "embedding the same queries and candidates alone",
        ("eval_cost.json", "eval_cost.quick.json"),
        (Headline("evaluation / embedding alone", at("ratio"), 1.10, at_least=False),
         Headline("evaluation / its own embedding", at("ratio_to_own_embedding")))),
    Benchmark(
        "eval_memory", "peak memory of a resumed evaluation over cached vectors",
        "the pool's float32 vector bytes",
        ("eval_memory.json", "eval_memory.quick.json"),
        (Headline("full pool", at("phases", "full", "ratio")),
         Headline("scattered half pool", at("phases", "half", "ratio"))),
        (Check("full pool <= 2x + 200 MB", at("phases", "full", "meets_target")),
         Check("half pool <= 2x + 200 MB", at("phases", "half", "meets_target")))),
    Benchmark(
        "rerank_throughput", "Qwen3-VL-Reranker pairs/s with cost-sorted batches, equal scores",
        "the reference's one pair per forward pass",
        ("rerank_throughput.json", "rerank_throughput.json"),
        (Headline("batched vs one pair at a time", at("ratio")),)),
    Benchmark(
        "startup", "a whole `umr search` process with minilm on the quick-start index (median)",
        "the same command on sentence-transformers",
        ("startup.json", "startup.quick.json"),
        (Headline("umr search", at("median_seconds", "umr search (light text path)"), 2.5, at_least=False, unit=" s"),
         Headline("vs sentence-transformers path", at("light_over_sentence_transformers"))),
        (Check("same results", at("same_results")),)),
    Benchmark(
        "serve", "umr serve /v1/embeddings throughput, 32 concurrent clients",
        "the same server answering one request at a time (--no-batching), same run",
        ("serve.json", "serve.json"),
        (Headline("minilm batching on vs off", at("throughput_ratio_on_vs_off", "minilm"), 2.0),
         Headline("tiny GME batching on vs off", at("throughput_ratio_on_vs_off", "tiny-gme"), 2.0),
         Headline("errors", lambda doc: sum(r.get("errors", 0) for r in doc["runs"]) if "runs" in doc else None,
                  0, at_least=False, unit=""))),
    Benchmark(
        "train_costs", "a GME training step's peak memory with --grad-checkpointing; training start-up vs data size",
        "the same step without the flag; Trainer() on 1,000 examples (same run)",
        ("train_costs.json", "train_costs.quick.json"),
        (Headline("step peak memory, checkpointed / plain", at("checkpointing", "memory_ratio"), 0.75,
                  at_least=False),
         Headline("step time, checkpointed / plain", at("checkpointing", "time_ratio")),
         Headline("start-up, 100k / 1k examples", at("startup", "ratio"), 1.5, at_least=False),
         Headline("checking all examples up front (before)", at("startup", "check_everything_up_front_s"),
                  unit=" s"))),
    Benchmark(
        "train_miniature", "tiny CLIP-SF trained with mined vs random negatives: modality bias and R@5",
        "random in-batch negatives from the same init",
        ("train_miniature.json", "train_miniature_quick.json"),
        (Headline("mean bias@5, random negatives", _miniature("random", "bias@5"), unit=""),
         Headline("mean bias@5, modality-aware mined", _miniature("aware", "bias@5"), unit=""),
         Headline("mean R@5, random negatives", _miniature("random", "recall@5"), unit=""),
         Headline("mean R@5, modality-aware mined", _miniature("aware", "recall@5"), unit=""))),
)


def machine() -> dict[str, Any]:
    """What the numbers were measured on: :func:`benchmarks.machine.machine` (CPU, cores, threads,
    bf16 matrix units, versions)."""
    if str(HERE) not in sys.path:  # imported from elsewhere (the tests): machine.py sits beside this file
        sys.path.insert(0, str(HERE))
    from machine import machine as describe

    return describe()


def run_benchmark(bench: Benchmark, *, quick: bool, results: Path = RESULTS) -> dict[str, Any]:
    """Run one benchmark as a subprocess (its output in ``results/logs/``) and read back what it
    wrote: one entry of all.json."""
    command = bench.command(quick)
    result_file = results / bench.result[1 if quick else 0]
    log_file = results / "logs" / f"{bench.name}{'.quick' if quick else ''}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with log_file.open("w", encoding="utf-8") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent,
                                env={**os.environ, "PYTHONPATH": _pythonpath()}).returncode
    entry: dict[str, Any] = {"name": bench.name, "what": bench.what, "baseline": bench.baseline,
                             "command": " ".join(["python", f"benchmarks/{Path(command[1]).name}", *command[2:]]),
                             "exit_status": status, "duration_s": round(time.time() - started, 1),
                             "result_file": result_file.name, "log": _shown(log_file),
                             "headlines": [], "checks": [], "passed": False}
    doc, problem = None, None
    if status != 0:
        problem = "failed"
    elif not (result_file.is_file() and result_file.stat().st_mtime >= started - 1):
        problem = "no result"  # exited 0 but did not write its JSON: an old file is not this run's
    else:
        try:
            doc = json.loads(result_file.read_text(encoding="utf-8"))
        except ValueError:
            problem = "no result"
    if problem is not None:
        tail = log_file.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-ERROR_LINES:]
        return {**entry, "status": problem,
                "error": "\n".join(tail) if status != 0 else f"{result_file.name} was not written as JSON by this run"}
    return {**entry, **judge(bench, doc), "status": "ok"}


def judge(bench: Benchmark, doc: dict[str, Any]) -> dict[str, Any]:
    """A result document's headline numbers and checks, and whether the benchmark passed: a
    missed target fails it, all met pass it; without targets, or with a number missing from the
    result, it is unknown (None)."""
    headlines, checks = [], []
    for headline in bench.headlines:
        value = headline.value(doc)
        headlines.append({"label": headline.label, "value": value, "unit": headline.unit,
                          "target": headline.spell_target() or None, "passed": headline.judge(value)})
    for check in bench.checks:
        met = check.met(doc)
        checks.append({"label": check.label, "passed": met if isinstance(met, bool) else None})
    verdicts = [h["passed"] for h in headlines if h["target"]] + [c["passed"] for c in checks]
    passed = False if False in verdicts else (True if verdicts and None not in verdicts else None)
    return {"headlines": headlines, "checks": checks, "passed": passed}


def collect(bench: Benchmark, *, quick: bool, results: Path = RESULTS) -> dict[str, Any]:
    """The entry of a benchmark from the result file already in ``results``, without running it
    (``--collect``: the committed numbers, e.g. for the README)."""
    result_file = results / bench.result[1 if quick else 0]
    entry: dict[str, Any] = {"name": bench.name, "what": bench.what, "baseline": bench.baseline,
                             "command": " ".join(["python", f"benchmarks/{bench.name}.py"] + (["--quick"] if quick else [])),
                             "exit_status": None, "duration_s": None, "result_file": result_file.name}
    try:
        doc = json.loads(result_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return {**entry, "status": "no result", "error": f"{result_file.name}: {exc}", "headlines": [], "checks": [],
                "passed": False}
    written = datetime.fromtimestamp(result_file.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    return {**entry, **judge(bench, doc), "status": "collected", "written": written}


def _shown(path: Path) -> str:
    """A path as the repository names it (absolute when outside it)."""
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path)


def _pythonpath() -> str:
    src = str(HERE.parent / "src")
    return os.pathsep.join([src, os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH") else src


def run_all(benchmarks: Sequence[Benchmark], *, quick: bool, results: Path = RESULTS, run: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every benchmark in turn (``run=False``: their result files as they are); the all.json
    document, written to ``results`` after a run."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    entries = []
    for bench in benchmarks:
        if not run:
            entries.append(collect(bench, quick=quick, results=results))
            continue
        log(f"run_all: {bench.name} ({' '.join(bench.command(quick)[1:])}) ...")
        entries.append(run_benchmark(bench, quick=quick, results=results))
        log(f"run_all: {bench.name}: {entries[-1]['status']} in {entries[-1]['duration_s']:.0f} s")
    doc = {"quick": quick, "started": started, "ran": run, "machine": machine(), "benchmarks": entries,
           "failed": [e["name"] for e in entries if e["status"] not in ("ok", "collected")],
           "targets_missed": [e["name"] for e in entries if e["passed"] is False and e["headlines"] + e["checks"]]}
    if run:  # a collection is printed only: all.json always holds a run
        results.mkdir(parents=True, exist_ok=True)
        (results / ("all.quick.json" if quick else "all.json")).write_text(json.dumps(doc, indent=1) + "\n",
                                                                           encoding="utf-8")
    return doc


def _number(value: Any, unit: str) -> str:
    if value is None:
        return "missing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if unit == "" and 0.99 <= value < 1:  # a cosine or a recall near 1: the digits after the 9s are the news
            return f"{value:.6g}{unit}"
        return f"{value:.3g}{unit}" if abs(value) < 1000 else f"{value:.0f}{unit}"
    return f"{value}{unit}"


def table(doc: dict[str, Any]) -> str:
    """The all.json document as a Markdown table: one row per headline number or check."""
    verdict = {True: "met", False: "NOT met", None: ""}
    lines = ["| benchmark | status | time | number | value | target |", "|---|---|---|---|---|---|"]
    for e in doc["benchmarks"]:
        head = [e["name"], e["status"] + ("" if e["exit_status"] in (0, None) else f" (exit {e['exit_status']})"),
                "" if e["duration_s"] is None else f"{e['duration_s']:.0f} s"]
        rows = [[h["label"], _number(h["value"], h["unit"]),
                 f"{h['target']} {verdict[h['passed']]}".strip() if h["target"] else ""] for h in e["headlines"]]
        rows += [[c["label"], "", verdict[c["passed"]] or "missing"] for c in e["checks"]]
        if not rows:
            rows = [[(e.get("error") or "").splitlines()[-1][:80] if e.get("error") else "", "", ""]]
        for i, row in enumerate(rows):
            lines.append("| " + " | ".join((head if i == 0 else ["", "", ""]) + row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's --quick run")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these benchmarks")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--collect", action="store_true",
                        help="run nothing: tabulate the result files already in benchmarks/results")
    args = parser.parse_args(argv)
    by_name = {b.name: b for b in BENCHMARKS}
    if args.list:
        for b in BENCHMARKS:
            targets = ", ".join(f"{h.label} {h.spell_target()}" for h in b.headlines if h.target is not None)
            targets += (", " if targets and b.checks else "") + ", ".join(c.label for c in b.checks)
            print(f"{b.name}: {b.what}; baseline: {b.baseline}" + (f"; targets: {targets}" if targets else ""))
        return 0
    unknown = [name for name in args.only or [] if name not in by_name]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(by_name)}")
    chosen = [by_name[name] for name in args.only] if args.only else list(BENCHMARKS)
    doc = run_all(chosen, quick=args.quick, run=not args.collect)
    print(table(doc))
    if not args.collect:
        print(f"wrote {RESULTS / ('all.quick.json' if args.quick else 'all.json')}")
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
