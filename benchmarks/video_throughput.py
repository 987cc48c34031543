"""Video embedding: umr's Qwen3-VL-Embedding video path against the reference-style loop, in one run.

Both embed the same generated clips (several sizes, rates, lengths and key-frame spacings) with
the same random mid-sized Qwen3-VL (``embed_throughput.py``'s shapes) in float32, at the
reference's sampling (1 frame per second, at most 64 frames):

* **reference**: ``Qwen3VLEmbedder`` followed literally (:mod:`umr.verify.references.qwen_video`),
  one item at a time: every frame of the file decoded to RGB and kept, then sampled
  (qwen-vl-utils' ``fetch_video`` as its torchvision reader does it; its decord reader seeks
  inside ``get_batch``, but decord is neither installed here nor maintained), resized, patched,
  transformers' processor and ``Qwen3VLModel``;
* **umr**: ``umr.load_model(...).embed(items)``: each video probed from its packet headers, only
  the sampled frames decoded (a seek to the key frame before each), each resized as soon as it is
  decoded, items prepared in the prefetching loader (at the machine's default worker count; the
  other setting is timed too), cost-sorted batches through the packed decoder.

Measured: items/s (best of ``--repeats``, the paths interleaved), the ratio umr / reference, the
max |delta| between their vectors, and each path's peak memory: the rise of the process's peak
resident set (``VmHWM`` of ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after
loading the model and one warm-up item) while it embeds the clips once, each path in a fresh
process; and the peak of ``tracemalloc`` (Python and NumPy allocations, not PyTorch's) in the
same pass. Prints a table and writes ``benchmarks/results/video_throughput.json`` (``--quick``: a
tiny model and two small clips, ``video_throughput.quick.json``).

    python benchmarks/video_throughput.py            # full run (minutes on 2 cores)
    python benchmarks/video_throughput.py --quick    # smoke run (a tiny model)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

import umr
from embed_throughput import MID_Q3_TEXT, MID_Q3_VISION, timed_group  # benchmarks/embed_throughput.py
from machine import machine  # benchmarks/machine.py
from umr.core.items import Item
from umr.core.video import probe_video
from umr.testing import write_tiny_qwen3vl
from umr.verify.references.qwen_video import Qwen3VLVideoReference

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Clip:
    """A generated H.264 clip: a panning texture whose colour changes every few seconds."""

    name: str
    width: int
    height: int
    rate: int
    seconds: float
    #: frames between key frames (phones and streaming: about 1-2 s; x264's default: 250)
    gop: int


#: several sizes, rates, lengths and key-frame spacings
CLIPS = (
    Clip("qvga-60s", 320, 240, 30, 60, gop=30),
    Clip("vga-20s", 640, 480, 30, 20, gop=60),
    Clip("hd720-10s", 1280, 720, 25, 10, gop=250),
    Clip("portrait-15s", 360, 640, 24, 15, gop=48),
)
QUICK_CLIPS = (
    Clip("small-12s", 160, 120, 10, 12, gop=10),
    Clip("wide-6s", 256, 144, 15, 6, gop=30),
)


def write_clip(path: Path, clip: Clip) -> Path:
    """Encode ``clip`` with PyAV (libx264, yuv420p): texture moves 3 px a frame, so every frame differs
    and decoding costs what real footage costs at that size."""
    import av

    rng = np.random.RandomState(len(clip.name))
    texture = rng.randint(0, 256, (clip.height + 64, clip.width * 2 + 64, 3), dtype=np.uint8)
    texture = (texture // 64 * 64).astype(np.uint8)  # coarse levels: compressible, still textured
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=clip.rate)
        stream.width, stream.height, stream.pix_fmt = clip.width, clip.height, "yuv420p"
        stream.options = {"g": str(clip.gop), "keyint_min": str(clip.gop), "sc_threshold": "0",
                          "preset": "ultrafast"}
        for i in range(int(clip.seconds * clip.rate)):
            x = (3 * i) % clip.width
            frame = texture[: clip.height, x: x + clip.width].copy()
            frame[..., i // (4 * clip.rate) % 3] //= 2  # a "scene" change every 4 s
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def clip_items(folder: Path, clips: tuple[Clip, ...], copies: int) -> list[Item]:
    """Write the clips to ``folder``; their items (:func:`items_of`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        write_clip(folder / f"{clip.name}.mp4", clip)
    return items_of(folder, clips, copies)


def write_model(folder: Path, quick: bool) -> Path:
    if quick:
        return write_tiny_qwen3vl(folder, seed=0)
    return write_tiny_qwen3vl(folder, seed=0, text=MID_Q3_TEXT, vision=MID_Q3_VISION)


# -- the two paths -------------------------------------------------------------------------------

def umr_path(folder: Path):
    model = umr.load_model(folder, dtype="float32")
    return model, (lambda items: model.embed(items).vectors)


def reference_path(folder: Path):
    reference = Qwen3VLVideoReference(folder)
    return reference, (lambda items: np.stack([reference.embed_item(item) for item in items]))


PATHS = {"umr": umr_path, "reference": reference_path}


# -- memory: each path in a fresh process ---------------------------------------------------------

def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def measure_memory(path_name: str, folder: Path, items: list[Item]) -> dict:
    """Peak memory of one path embedding ``items`` once, in this (fresh) process: the rise of the
    peak resident set over the resident set before, and tracemalloc's peak, after loading the
    model and warming up on one item."""
    _, run = PATHS[path_name](folder)
    run(items[:1])
    Path("/proc/self/clear_refs").write_text("5")  # the peak resident set starts again from now
    before = _status_kb("VmRSS")
    tracemalloc.start()
    run(items)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = _status_kb("VmHWM")
    return {"peak_rss_rise_mb": (peak - before) / 1024, "peak_rss_mb": peak / 1024,
            "tracemalloc_peak_mb": traced_peak / 2**20}


def memory_in_subprocess(path_name: str, folder: Path, clips_dir: Path, clips: tuple[Clip, ...],
                         copies: int, threads: int) -> dict:
    command = [sys.executable, __file__, "--memory-of", path_name, "--model-dir", str(folder),
               "--clips-dir", str(clips_dir), "--copies", str(copies), "--threads", str(threads)] \
        + (["--quick"] if clips is QUICK_CLIPS else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory run of {path_name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def items_of(folder: Path, clips: tuple[Clip, ...], copies: int) -> list[Item]:
    """``copies`` items per clip written in ``folder``: odd copies are queries with a text beside the
    video and an instruction."""
    items = []
    for copy in range(copies):
        for clip in clips:
            path, item_id = str(folder / f"{clip.name}.mp4"), f"{clip.name}/{copy}"
            items.append(Item.query(f"what happens in the {clip.name} clip", video=path, instruction="Find the clip",
                                    id=item_id) if copy % 2 else Item(video=path, id=item_id))
    return items


# -- the run --------------------------------------------------------------------------------------

def bench(quick: bool, copies: int, repeats: int, workdir: Path) -> dict:
    from umr.models.prefetch import resolved_workers

    clips = QUICK_CLIPS if quick else CLIPS
    clips_dir = workdir / "clips"
    items = clip_items(clips_dir, clips, copies)
    folder = write_model(workdir / "qwen3vl", quick)
    model, run_umr = umr_path(folder)
    reference, run_reference = reference_path(folder)
    run_umr(items[:1])
    run_reference(items[:1])

    default_workers = resolved_workers(model.prefetch_workers)

    def other_prefetch() -> np.ndarray:
        """umr with prefetching the other way round from this machine's default."""
        model.prefetch_workers = 0 if default_workers else 1
        try:
            return run_umr(items)
        finally:
            model.prefetch_workers = type(model).prefetch_workers

    seconds, outs = timed_group({"reference": lambda: run_reference(items), "umr": lambda: run_umr(items),
                                 "other_prefetch": other_prefetch}, repeats)
    memory = {name: memory_in_subprocess(name, folder, clips_dir, clips, copies, torch.get_num_threads())
              for name in PATHS}
    n = len(items)
    plans = {clip.name: model.video_plan(Item(video=str(clips_dir / f"{clip.name}.mp4"))) for clip in clips}
    clip_rows = []
    for clip in clips:
        info = probe_video(clips_dir / f"{clip.name}.mp4")
        plan = plans[clip.name]
        clip_rows.append({**asdict(clip), "frames": info.frames, "sampled_frames": len(plan.positions),
                          "frame_size": [plan.width, plan.height]})
    n_params = sum(p.numel() for p in model.model.parameters())
    return {
        "model": ("tiny random Qwen3-VL" if quick else f"random Qwen3-VL: text {MID_Q3_TEXT}, vision {MID_Q3_VISION}")
                 + f" ({n_params / 1e6:.1f}M params), float32",
        "clips": clip_rows, "items": n, "copies_per_clip": copies, "repeats": repeats,
        "sampling": "the reference's: 1 frame per second, at most 64 frames",
        "reference_items_per_s": n / seconds["reference"], "umr_items_per_s": n / seconds["umr"],
        "ratio": seconds["reference"] / seconds["umr"],
        "max_abs_delta": float(np.abs(outs["umr"] - outs["reference"]).max()),
        "prefetch_workers_default": default_workers, "other_prefetch_items_per_s": n / seconds["other_prefetch"],
        # prefetching (one worker) against preparing inline, whichever is the default
        "prefetch_speedup": (seconds["other_prefetch"] / seconds["umr"] if default_workers
                             else seconds["umr"] / seconds["other_prefetch"]),
        "memory": memory,
        "memory_ratio": memory["umr"]["peak_rss_rise_mb"] / max(memory["reference"]["peak_rss_rise_mb"], 1e-9),
        "memory_measure": "peak resident set rise (VmHWM reset via /proc/self/clear_refs, after loading and one "
                          "warm-up item) over one pass of the items, each path in a fresh process; tracemalloc peak "
                          "in the same pass (Python and NumPy allocations, not PyTorch's)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny model and two small clips")
    parser.add_argument("--copies", type=int, default=None, help="items per clip (default: 2, quick: 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes, best kept (default: 2, quick: 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None)
    # one path's memory in a fresh process (the run starts these itself)
    parser.add_argument("--memory-of", choices=sorted(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--clips-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    copies = args.copies or (1 if args.quick else 2)
    if args.memory_of:
        items = items_of(args.clips_dir, QUICK_CLIPS if args.quick else CLIPS, copies)
        print(json.dumps(measure_memory(args.memory_of, args.model_dir, items)))
        return 0
    repeats = args.repeats or (1 if args.quick else 2)
    output = args.output or RESULTS / ("video_throughput.quick.json" if args.quick else "video_throughput.json")
    with tempfile.TemporaryDirectory(prefix="umr-video-bench-") as tmp:
        row = bench(args.quick, copies, repeats, Path(tmp))

    print(f"{'path':<10} {'items/s':>8} {'ratio':>7} {'peak RSS rise':>14} {'tracemalloc peak':>17}")
    for name, rate, ratio in (("reference", row["reference_items_per_s"], 1.0),
                              ("umr", row["umr_items_per_s"], row["ratio"])):
        mem = row["memory"][name]
        print(f"{name:<10} {rate:>8.3f} {ratio:>6.2f}x {mem['peak_rss_rise_mb']:>11.0f} MB "
              f"{mem['tracemalloc_peak_mb']:>14.0f} MB")
    print(f"umr / reference peak RSS rise: {row['memory_ratio']:.2f}; max|delta| {row['max_abs_delta']:.1e}; "
          f"prefetching {row['prefetch_speedup']:.2f}x (default workers: {row['prefetch_workers_default']})")
    doc = {"meta": {**machine(), "quick": args.quick, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
           "qwen3vl_video": row}
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
