"""Training costs that must stay bounded: a GME step's peak memory with ``--grad-checkpointing``,
and start-up against the size of the training data.

* **checkpointing** — one full fine-tuning step (queries and candidates through
  ``training_forward``, InfoNCE, backward) of an activation-heavy random GME (residual width 32,
  MLP 4096, 4 layers, ~275 tokens per item, 6 queries + 6 candidates), each setting in a fresh
  process: the step's peak resident memory (``ru_maxrss`` after the step less before it) and its
  wall time, with the flag over without. Target (issue 21): memory ≤ 0.75×.
* **start-up** — ``Trainer(config)`` (model load, data opened, batch plan) with a tiny GME on a
  generated training JSONL of 100,000 examples (every other positive an image among 50 files, one
  text negative each) over the same with 1,000, each in a fresh process, the median of several
  runs. Target: ≤ 1.5× — start-up does not grow with the data (examples are checked when drawn).
  For scale, the same run measures what checking every example up front (what start-up did
  before issue 21) would cost: reading and checking 2,000 examples, per example and for 100,000.

Prints a table and writes ``benchmarks/results/train_costs.json`` (``train_costs.quick.json`` with
``--quick``: one start-up run each, 20,000 examples). Never asserted in tests, except that
``tests/models/test_checkpointing.py`` reuses :func:`step_memory` for its own bound.

    python benchmarks/train_costs.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEMORY_TARGET = 0.75
STARTUP_TARGET = 1.5

#: one training step in a fresh process: the step's own peak resident memory (ru_maxrss after the
#: step less before it; the units cancel in the ratio) and its wall time
STEP = """
import json, random, resource, sys, time
import umr
from umr.train.loss import info_nce
from umr.core.items import Item

folder, checkpointing, items, words = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
model = umr.load_model(folder)
for p in model.trainable_module().parameters():
    p.requires_grad_(True)
if checkpointing:
    model.enable_gradient_checkpointing()
vocab = "the a red blue cat dog house tree river mountain city car bird sun moon star".split()
rng = random.Random(0)
text = lambda: " ".join(rng.choice(vocab) for _ in range(words))
queries = [Item.query(text()) for _ in range(items)]
candidates = [Item.candidate(text()) for _ in range(items)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
info_nce(model.training_forward(queries), model.training_forward(candidates)).backward()
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"step_peak": after - before, "process_peak": after, "seconds": seconds,
                  "tokens_per_item": model.check(queries[0])}))
"""

#: ``Trainer(config)`` in a fresh process (after the imports): seconds
STARTUP = """
import json, sys, time
from umr.train import TrainConfig
from umr.train.trainer import Trainer

start = time.perf_counter()
Trainer(TrainConfig(model=sys.argv[1], data=[sys.argv[2]], output=sys.argv[3], batch_size=8, progress=False))
print(json.dumps({"seconds": time.perf_counter() - start}))
"""

#: reading and checking the first N examples, as drawing them does (what start-up did for all)
CHECK_ALL = """
import json, sys, time
import umr
from umr.train.data import TrainingData

model = umr.load_model(sys.argv[1])
data = TrainingData([sys.argv[2]], check=model.check)
n = int(sys.argv[3])
start = time.perf_counter()
bad = sum(data.read(i) is None for i in range(n))
print(json.dumps({"seconds": time.perf_counter() - start, "examples": n, "bad": bad}))
"""


def _env() -> dict[str, str]:
    # glibc: a fixed mmap threshold, so every large tensor is mapped and given back when freed (its
    # default threshold grows with the sizes freed, after which freed tensors stay resident, and
    # ru_maxrss would measure the allocator's reuse instead of what the step holds)
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                MALLOC_MMAP_THRESHOLD_="1048576")


def _child(code: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          env=_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child process failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- checkpointing ----------------------------------------------------------------------------------


def activation_heavy_gme(folder: Path) -> Path:
    """A GME whose step is mostly activations: a wide MLP (4096) over a narrow residual stream,
    four layers, a few thousand tokens a step (the weights are ~6 MB)."""
    from umr.testing import write_tiny_gme

    return write_tiny_gme(folder, text=dict(hidden_size=32, intermediate_size=4096, num_hidden_layers=4))


def step_memory(folder: Path, *, checkpointing: bool, items: int = 6, words: int = 150) -> dict:
    """One training step of the GME in ``folder`` in a fresh process: its peak memory and time."""
    return _child(STEP, folder, int(checkpointing), items, words)


def checkpointing(work: Path) -> dict:
    folder = activation_heavy_gme(work / "gme-heavy")
    plain = step_memory(folder, checkpointing=False)
    checked = step_memory(folder, checkpointing=True)
    ratio = checked["step_peak"] / plain["step_peak"]
    return {"plain": plain, "checkpointed": checked, "memory_ratio": round(ratio, 3),
            "time_ratio": round(checked["seconds"] / plain["seconds"], 3),
            "meets_target": ratio <= MEMORY_TARGET, "target": MEMORY_TARGET}


# -- start-up ---------------------------------------------------------------------------------------


def write_training_file(path: Path, n: int, images: list[str]) -> Path:
    rng = random.Random(n)
    words = "the a red blue cat dog house tree river mountain city car bird sun moon star".split()

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            positive = {"image": images[i % len(images)]} if i % 2 else {"text": text(30), "id": f"d{i}"}
            handle.write(json.dumps({"query": {"text": text(12)}, "positive": positive,
                                     "negatives": [{"text": text(20)}]}) + "\n")
    return path


def startup(work: Path, *, large: int, runs: int) -> dict:
    from PIL import Image

    from umr.testing import write_tiny_gme

    model = write_tiny_gme(work / "tiny-gme")
    (work / "img").mkdir()
    images = []
    for i in range(50):
        Image.new("RGB", (64 + i, 48 + i), (5 * i, 0, 0)).save(work / "img" / f"{i}.png")
        images.append(f"img/{i}.png")
    files = {n: write_training_file(work / f"train-{n}.jsonl", n, images) for n in (1000, large)}
    seconds: dict[int, list[float]] = {n: [] for n in files}
    for run in range(runs):
        for n, path in files.items():  # interleaved: the machine's load affects both alike
            seconds[n].append(_child(STARTUP, model, path, work / f"out-{n}-{run}")["seconds"])
    medians = {n: statistics.median(s) for n, s in seconds.items()}
    checked = _child(CHECK_ALL, model, files[large], 2000)
    per_example = checked["seconds"] / checked["examples"]
    return {"examples": large, "runs": runs, "seconds": {str(n): s for n, s in seconds.items()},
            "median_seconds": {str(n): round(m, 3) for n, m in medians.items()},
            "ratio": round(medians[large] / medians[1000], 3), "target": STARTUP_TARGET,
            "meets_target": medians[large] / medians[1000] <= STARTUP_TARGET,
            "check_per_example_us": round(per_example * 1e6, 1),
            "check_everything_up_front_s": round(per_example * large, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        memory = checkpointing(work)
        (work / "startup").mkdir()
        start = startup(work / "startup", large=20_000 if args.quick else 100_000, runs=1 if args.quick else 3)
    doc = {"checkpointing": memory, "startup": start,
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    print(f"checkpointing: step peak {memory['checkpointed']['step_peak'] / 1024:.0f} MB with the flag vs "
          f"{memory['plain']['step_peak'] / 1024:.0f} MB without: {memory['memory_ratio']}x (target <= "
          f"{MEMORY_TARGET}x), time {memory['time_ratio']}x")
    m = start["median_seconds"]
    print(f"start-up: Trainer() {m[str(start['examples'])]} s for {start['examples']:,} examples vs {m['1000']} s "
          f"for 1,000: {start['ratio']}x (target <= {STARTUP_TARGET}x); checking every example up front would "
          f"take {start['check_everything_up_front_s']} s ({start['check_per_example_us']} us each)")
    out = ROOT / "benchmarks" / "results" / ("train_costs.quick.json" if args.quick else "train_costs.json")
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
