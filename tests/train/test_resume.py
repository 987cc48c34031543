"""Exact resume: a run stopped (or SIGKILLed) and resumed ends with the weights of a run
that was never interrupted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from umr.train import TrainConfig, TrainingError, train
from umr.train import checkpoint

from train_fixtures import StopTraining, stopped_after, text_examples

SRC = str(Path(__file__).parents[2] / "src")


def _settings(tiny_text_dir, data, out, **extra):
    return dict(model=str(tiny_text_dir), data=[str(data)], output=str(out), batch_size=3, grad_accum=2, lr=3e-3,
                hard_negatives=1, warmup=2, schedule="cosine", seed=7, progress=False, **extra)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst <= 1e-6, worst


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted(tiny_text_dir, tmp_path):
    data = text_examples(tmp_path / "train.jsonl")
    train(TrainConfig(**_settings(tiny_text_dir, data, tmp_path / "whole", max_steps=5, save_every=2)))

    with stopped_after(3), pytest.raises(StopTraining):
        train(TrainConfig(**_settings(tiny_text_dir, data, tmp_path / "cut", max_steps=5, save_every=2)))
    assert checkpoint.completed(tmp_path / "cut" / "checkpoints") == [2]
    # without --resume a run never overwrites checkpoints; with other settings it refuses to resume
    with pytest.raises(TrainingError, match="--resume"):
        train(TrainConfig(**_settings(tiny_text_dir, data, tmp_path / "cut", max_steps=5)))
    with pytest.raises(TrainingError, match="lr"):
        train(TrainConfig(**{**_settings(tiny_text_dir, data, tmp_path / "cut", max_steps=5, resume=True), "lr": 1e-3}))
    train(TrainConfig(**_settings(tiny_text_dir, data, tmp_path / "cut", max_steps=5, resume=True)))
    _assert_same(tmp_path / "whole", tmp_path / "cut")
    rows = (tmp_path / "cut" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(s) for s in range(1, 6)]


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tiny_text_dir, tmp_path):
    data = text_examples(tmp_path / "train.jsonl")
    steps = 12
    train(TrainConfig(**_settings(tiny_text_dir, data, tmp_path / "whole", max_steps=steps, save_every=3)))

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "umr.cli", "train", "--model", str(tiny_text_dir), "--data", str(data),
               "--output", str(out), "--batch-size", "3", "--grad-accum", "2", "--lr", "3e-3", "--hard-negatives", "1",
               "--warmup", "2", "--schedule", "cosine", "--seed", "7", "--max-steps", str(steps), "--save-every", "3",
               "--no-progress"]
    env = {**os.environ, "PYTHONPATH": SRC}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not checkpoint.completed(out / "checkpoints") and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    done = checkpoint.completed(out / "checkpoints")
    assert done and done[-1] < steps and not (out / "training.json").exists()
    train(TrainConfig(**_settings(tiny_text_dir, data, out, max_steps=steps, save_every=3, resume=True)))
    _assert_same(tmp_path / "whole", out)
