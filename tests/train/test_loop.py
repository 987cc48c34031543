"""The training loop around the step: items prepared ahead by the family's prefetching loader
train exactly as items prepared inline; an example whose image breaks mid-run is left out and
reported, the run goes on; gradients averaged over two processes by the bucketed reducer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from umr.train import TrainConfig
from umr.train.trainer import Trainer

from train_fixtures import multimodal_examples

SRC = str(Path(__file__).parents[2] / "src")


def _run(model, data, out, *, workers, before=None) -> Trainer:
    trainer = Trainer(TrainConfig(model=str(model), data=[str(data)], output=str(out), max_steps=3, batch_size=4,
                                  lr=5e-3, batching="mixed", grad_cache_chunk=3, progress=False))
    trainer.embedder.prefetch_workers = workers
    if before is not None:
        before()
    trainer.run()
    return trainer


@pytest.mark.slow
def test_prefetched_items_train_as_inline_ones_and_a_broken_image_is_left_out(tmp_path):
    from umr.models.clip_sf.tiny import write_tiny_clip

    model = write_tiny_clip(tmp_path / "clip")
    inline = _run(model, multimodal_examples(tmp_path / "a" / "train.jsonl"), tmp_path / "inline", workers=0)
    ahead = _run(model, multimodal_examples(tmp_path / "b" / "train.jsonl"), tmp_path / "ahead", workers=1)
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("inline", "ahead"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert [r["loss"] for r in inline.metrics] == pytest.approx([r["loss"] for r in ahead.metrics], abs=1e-6)

    data = multimodal_examples(tmp_path / "c" / "train.jsonl")
    broken = tmp_path / "c" / "images" / "red.png"
    # the file breaks after start-up validated it: found when its example's items are prepared
    trainer = _run(model, data, tmp_path / "broken", workers=1, before=lambda: broken.write_bytes(b"not a png"))
    assert trainer.step == 3
    errors = [json.loads(line) for line in (tmp_path / "broken" / "errors.jsonl").read_text().splitlines()]
    assert errors and all(f"{data}:" in e["error"] and e["line"] in (1, 2) for e in errors)
    assert json.loads((tmp_path / "broken" / "training.json").read_text())["skipped_examples"] == len(errors)


@pytest.mark.slow
def test_gradient_reducer_averages_over_two_processes(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29519",
               str(Path(__file__).parent / "reducer_worker.py"), str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    # a: (1 + 2) on rank 0 and (2 + 2) on rank 1; b: 5 on rank 0 only (zeros for rank 1); c: none anywhere
    assert ranks[0] == {"a": [3.5] * 3, "b": [2.5] * 2, "c": None}
