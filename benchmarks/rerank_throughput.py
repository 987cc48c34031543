"""Reranking throughput: umr's batched Qwen3-VL-Reranker against the reference's one pair per pass.

The reference ``Qwen3VLReranker.process`` tokenises and scores each (query, document) pair in its
own forward pass. umr plans cost-sorted batches of pairs (left padding, one vision-tower call per
batch). Both run here on the same randomly initialised mid-sized Qwen3-VL, the same mixed pairs
(text, image and fused on both sides), in float32 on CPU; the baseline is umr's reranker with
``batch_size=1``, which the tests hold equal to the reference pair by pair, so the ratio is the
batching alone. Reports pairs/s, the ratio and max|delta| between the two outputs.

Ratios are measured here, never asserted in tests. Prints a table and writes
``benchmarks/results/rerank_throughput.json``.

    python benchmarks/rerank_throughput.py            # full run
    python benchmarks/rerank_throughput.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from umr.rerank import load_reranker
from umr.rerank.base import Pair
from umr.testing import write_tiny_qwen3vl_reranker
from umr.core.items import Item

RESULTS = Path(__file__).resolve().parent / "results" / "rerank_throughput.json"
MID_TEXT = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                num_key_value_heads=2, head_dim=64, mrope_section=[12, 10, 10])
MID_VISION = dict(depth=4, hidden_size=256, intermediate_size=1024, num_heads=4)
WORDS = ("a the of in on with dog cat car street city river mountain sky red green blue small large old new "
         "running sitting man woman child people table window road bridge train boat what where how").split()


def make_pairs(n: int, folder: Path, rng: random.Random) -> list[Pair]:
    def text(lo, hi):
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))

    def image(i):
        path = folder / f"img{i}.png"
        w, h = rng.randint(96, 320), rng.randint(96, 320)
        Image.fromarray(np.random.RandomState(i).randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        return str(path)

    pairs = []
    for i in range(n):
        kind_q, kind_d = i % 3, (i // 3) % 3
        query = Item.query(text(4, 16) if kind_q != 1 else None, image=image(2 * i) if kind_q != 0 else None,
                           id=f"q{i}")
        doc = Item.candidate(text(10, 80) if kind_d != 1 else None, image=image(2 * i + 1) if kind_d != 0 else None,
                             id=f"d{i}")
        pairs.append(Pair(query, doc))
    return pairs


def timed(reranker, pairs, batch_size, repeats):
    best, scores = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        scores = reranker.score_pairs(pairs, batch_size=batch_size).scores
        best = min(best, time.perf_counter() - t0)
    return best, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run")
    args = parser.parse_args()
    torch.manual_seed(0)
    n, repeats = (12, 1) if args.quick else (48, 2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = write_tiny_qwen3vl_reranker(tmp / "mid-qwen3-vl-reranker", text=MID_TEXT, vision=MID_VISION)
        reranker = load_reranker(folder)
        pairs = make_pairs(n, tmp, random.Random(0))
        reranker.score_pairs(pairs[:3])  # warm-up
        base_s, base = timed(reranker, pairs, 1, repeats)
        umr_s, ours = timed(reranker, pairs, 8, repeats)
    rows = [{"path": "one pair per forward pass (the reference's loop)", "pairs_per_s": n / base_s},
            {"path": "umr: cost-sorted batches of up to 8", "pairs_per_s": n / umr_s}]
    ratio = base_s / umr_s
    delta = float(np.abs(ours - base).max())
    print(f"{'path':<52} {'pairs/s':>9}")
    for row in rows:
        print(f"{row['path']:<52} {row['pairs_per_s']:>9.2f}")
    print(f"ratio {ratio:.2f}x, max|delta| {delta:.1e} over {n} pairs")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"pairs": n, "quick": args.quick, "rows": rows, "ratio": ratio,
                                   "max_abs_delta": delta, "torch": torch.__version__,
                                   "machine": platform.machine(), "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
