"""A GPU check of ``umr train``: a mid-sized random GME trained for a few steps on CUDA with bf16,
GradCache, gradient checkpointing and LoRA; prints the step time, the peak memory and the loss.

The model is written with the tiny-model writer at a larger configuration (Qwen2-VL layout:
hidden 1024, 12 decoder layers, an 8-block vision tower of width 512; ~165M parameters), the
data is generated (text and image queries and candidates, one hard negative each), and the run
goes through the ``umr train`` command line in this process, so the flags below are exactly what
a user passes. A second run without ``--grad-checkpointing`` gives the memory that checkpointing
saves (``--no-compare`` skips it). Exits 2 without CUDA (``--cpu``: a small model on the CPU, to
prove the script end to end where no GPU is at hand), 1 when a loss is not finite.

    scripts/gpu_check.sh            # on a GPU machine: under 5 minutes
    scripts/gpu_check.sh --cpu      # anywhere: a small model, a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

#: decoder and vision tower of the GPU check (~165M parameters) and of the small CPU run
SIZES = {
    "gpu": dict(text=dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                          num_key_value_heads=2, mrope_section=[8, 12, 12]),
                vision=dict(depth=8, embed_dim=512, num_heads=8, mlp_ratio=4)),
    "cpu": dict(text=dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, mrope_section=[8, 12, 12]),
                vision=dict(depth=2, embed_dim=128, num_heads=4, mlp_ratio=2)),
}
#: (examples per step, GradCache chunk, optimizer steps, most tokens per image, examples written)
RUNS = {"gpu": (32, 8, 8, 256, 320), "cpu": (4, 2, 2, 64, 16)}
WORDS = ("red blue green yellow black white circle square triangle house river tree bird car city mountain "
         "boat road sky sea street window garden bridge tower market station harbour forest field").split()


def write_data(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` examples over generated pictures (224-448 px): text -> image, image -> text, text -> text."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)

    def words(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    def picture(i: int) -> str:
        w, h = rng.randint(224, 448), rng.randint(224, 448)
        image = Image.new("RGB", (w, h), tuple(rng.randint(0, 255) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x, y = rng.randint(0, w - 40), rng.randint(0, h - 40)
            draw.rectangle([x, y, x + rng.randint(10, 40), y + rng.randint(10, 40)],
                           fill=tuple(rng.randint(0, 255) for _ in range(3)))
        image.save(folder / "img" / f"{i}.png")
        return f"img/{i}.png"

    path = folder / "train.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            kind = i % 3
            if kind == 0:
                example = {"query": {"text": words(12), "instruction": "Find the picture."},
                           "positive": {"image": picture(i)}}
            elif kind == 1:
                example = {"query": {"image": picture(i), "instruction": "Describe the picture."},
                           "positive": {"text": words(40)}}
            else:
                example = {"query": {"text": words(16)}, "positive": {"text": words(60)}}
            example["negatives"] = [{"text": words(40)}]
            handle.write(json.dumps(example) + "\n")
    return path


def train_once(flags: list[str], output: Path, device: str) -> dict:
    """``umr train FLAGS --output OUTPUT`` in this process: per-step seconds and losses, peak memory."""
    import torch

    from umr.cli import main

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    code = main(["train", *flags, "--output", str(output)])
    if code != 0:
        raise SystemExit(f"gpu_check: umr train exited {code}")
    rows = list(csv.DictReader((output / "metrics.csv").open(encoding="utf-8")))
    per_step = int(flags[flags.index("--batch-size") + 1])
    # examples_per_s is the rate since the run's first step: the time at step k is k * batch / rate
    elapsed = [(k + 1) * per_step / float(r["examples_per_s"]) for k, r in enumerate(rows)]
    steps = [b - a for a, b in zip([0.0] + elapsed, elapsed)]
    if device == "cuda":
        peak = {"peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20,
                "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20}
    else:  # the process's resident peak (model writing and data included): an upper bound
        peak = {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    record = json.loads((output / "training.json").read_text())
    return {"losses": [float(r["loss"]) for r in rows], "step_seconds": steps, "run_seconds": time.perf_counter()
            - started, "trainable_parameters": record["trainable_parameters"], **peak}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="a small model on the CPU (no GPU needed)")
    parser.add_argument("--steps", type=int, help="optimizer steps (default 8 on a GPU, 2 on the CPU)")
    parser.add_argument("--no-compare", action="store_true", help="skip the run without --grad-checkpointing")
    parser.add_argument("--keep", type=Path, help="write model, data and runs here (default: a temporary folder)")
    args = parser.parse_args(argv)

    import torch

    size = "cpu" if args.cpu else "gpu"
    if not args.cpu and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}, built for CUDA {torch.version.cuda}); run with --cpu for the small CPU check",
              file=sys.stderr)
        return 2
    device = "cpu" if args.cpu else "cuda"
    batch, chunk, steps, image_tokens, examples = RUNS[size]
    steps = args.steps or steps

    from safetensors import safe_open

    from umr.testing import write_tiny_gme

    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        model = write_tiny_gme(work / "gme", seed=0, **SIZES[size])
        data = write_data(work / "data", examples)
        prepared = time.perf_counter() - started
        flags = ["--model", str(model), "--data", str(data), "--device", device, "--bf16",
                 "--grad-cache-chunk", str(chunk), "--batch-size", str(batch), "--hard-negatives", "1",
                 "--lora-r", "16", "--max-steps", str(steps), "--max-image-tokens", str(image_tokens),
                 "--batching", "mixed", "--no-progress"]
        checked = train_once(flags + ["--grad-checkpointing"], work / "run-checkpointing", device)
        plain = None if args.no_compare or device == "cpu" else train_once(flags, work / "run-plain", device)

        with safe_open(str(model / "model.safetensors"), "pt") as weights:  # shapes only, nothing loaded
            parameters = sum(math.prod(weights.get_slice(k).get_shape()) for k in weights.keys())
        name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
        print(f"\ngpu_check on {name}: GME {parameters / 1e6:.0f}M parameters ({checked['trainable_parameters'] / 1e6:.2f}M "
              f"LoRA trainable), {batch} examples a step (+1 hard negative each), model and data written in "
              f"{prepared:.0f} s")
        print("umr train " + " ".join(flags).replace(str(work), "WORK") + " --grad-checkpointing")
        print(f"{'step':>4}  {'loss':>8}  {'seconds':>8}")
        for k, (loss, seconds) in enumerate(zip(checked["losses"], checked["step_seconds"]), start=1):
            print(f"{k:>4}  {loss:8.4f}  {seconds:8.3f}")
        later = checked["step_seconds"][1:] or checked["step_seconds"]
        print(f"step time (median after the first): {statistics.median(later):.3f} s; whole run "
              f"{checked['run_seconds']:.0f} s")
        if device == "cuda":
            print(f"peak GPU memory: {checked['peak_allocated_mb']:.0f} MB allocated, "
                  f"{checked['peak_reserved_mb']:.0f} MB reserved")
            if plain is not None:
                ratio = checked["peak_allocated_mb"] / plain["peak_allocated_mb"]
                print(f"without --grad-checkpointing: {plain['peak_allocated_mb']:.0f} MB allocated, step "
                      f"{statistics.median(plain['step_seconds'][1:] or plain['step_seconds']):.3f} s; "
                      f"checkpointed / plain memory {ratio:.2f}x")
        else:
            print(f"process peak resident memory: {checked['process_peak_rss_mb']:.0f} MB")
        bad = [loss for run in (checked, plain) if run for loss in run["losses"] if not math.isfinite(loss)]
        if bad:
            print(f"gpu_check: FAILED, non-finite loss {bad[0]}", file=sys.stderr)
            return 1
        print("gpu_check: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
