"""Whole-process wall time of ``umr search`` with minilm on the quick-start index.

Target (issue 15): one query answers in at most 2.5 s, start-up included. Measured, in one run,
as separate processes (the way a user meets it), each several times, the median reported:

* ``umr search`` as shipped: minilm on the light BERT path (no sentence-transformers import);
* the baseline: the same command with the text family forced onto sentence-transformers (the
  path before the light one existed) — same results, printed side by side to prove it;
* floors: the interpreter alone, ``import torch``, ``import sentence_transformers``.

The index is built first (``umr index samples/corpus --model minilm``, OCR included) in a
temporary folder; that build is not timed.

    .venv/bin/python benchmarks/startup.py --quick   # 3 runs each, ~1 min plus the index build
    .venv/bin/python benchmarks/startup.py           # 7 runs each

Prints a table and writes ``benchmarks/results/startup.json`` (``startup.quick.json`` with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUERY = "receipt for croissants and coffee"
TARGET_SECONDS = 2.5
#: run the CLI with the light text path switched off (every folder goes to sentence-transformers)
FORCE_SENTENCE_TRANSFORMERS = ("import sys; import umr.models.text.bert as m; "
                               "m.supports = lambda folder: False; from umr.cli import main; "
                               "sys.exit(main(sys.argv[1:]))")


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    return env


def _timed(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per command instead of 7")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 7)
    python = sys.executable

    with tempfile.TemporaryDirectory(prefix="umr-startup-") as tmp:
        index = Path(tmp) / "qs"
        print(f"building the quick-start index in {index} (not timed) ...", flush=True)
        _timed([python, "-m", "umr.cli", "index", str(ROOT / "samples" / "corpus"), "--index", str(index),
                "--model", "minilm", "--no-progress"])
        search = ["search", "--index", str(index), QUERY, "-k", "3"]
        commands = {
            "umr search (light text path)": [python, "-m", "umr.cli", *search],
            "umr search (sentence-transformers)": [python, "-c", FORCE_SENTENCE_TRANSFORMERS, *search],
            "python -c pass": [python, "-c", "pass"],
            "import torch": [python, "-c", "import torch"],
            "import sentence_transformers": [python, "-c", "import sentence_transformers"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        outputs: dict[str, str] = {}
        for _ in range(runs):  # interleaved, so a busy moment of the machine hits every command alike
            for name, command in commands.items():
                seconds, out = _timed(command)
                times[name].append(seconds)
                outputs[name] = out

    light, heavy = "umr search (light text path)", "umr search (sentence-transformers)"
    same = outputs[light] == outputs[heavy]
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"\n{'command':<38} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, values in times.items():
        print(f"{name:<38} {medians[name]:>9.2f} {min(values):>7.2f} {max(values):>7.2f}")
    ratio = medians[light] / medians[heavy]
    # what umr adds on top of importing torch, which any model needs (and which a busy machine
    # slows most): the part of the figure that is umr's own
    above_torch = medians[light] - medians["import torch"]
    print(f"\nlight / sentence-transformers: {ratio:.2f}x; same results: {same}; "
          f"target <= {TARGET_SECONDS} s: {'met' if medians[light] <= TARGET_SECONDS else 'NOT met'} "
          f"({medians[light]:.2f} s, {above_torch:.2f} s above `import torch`); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(outputs[light].rstrip())

    result = {
        "benchmark": "startup", "query": QUERY, "runs": runs, "target_seconds": TARGET_SECONDS,
        "median_seconds": medians, "all_seconds": times, "light_over_sentence_transformers": ratio,
        "light_above_torch_import_seconds": above_torch,
        "same_results": same, "target_met": medians[light] <= TARGET_SECONDS,
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "cpus": os.cpu_count(), "load_average_1m": os.getloadavg()[0]},
    }
    out = ROOT / "benchmarks" / "results" / ("startup.quick.json" if args.quick else "startup.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
