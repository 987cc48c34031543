"""Two CPU processes (gloo, launched as ``accelerate launch`` / ``torchrun`` do) train exactly as
one process with the same global batch: same losses, same weights."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from umr.train import TrainConfig, train

from train_fixtures import text_examples

SRC = str(Path(__file__).parents[2] / "src")


def _losses(folder: Path) -> list[float]:
    with (folder / "metrics.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process(tiny_text_dir, tmp_path):
    data = text_examples(tmp_path / "train.jsonl")
    common = dict(lr=3e-3, hard_negatives=1, max_steps=3, seed=1, progress=False)
    train(TrainConfig(model=str(tiny_text_dir), data=[str(data)], output=str(tmp_path / "one"), batch_size=4, **common))

    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517",
               "-m", "umr.cli", "train", "--model", str(tiny_text_dir), "--data", str(data),
               "--output", str(tmp_path / "two"), "--batch-size", "2", "--lr", "3e-3", "--hard-negatives", "1",
               "--max-steps", "3", "--seed", "1", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]

    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert two[0] == pytest.approx(one[0], abs=1e-5)
    assert two == pytest.approx(one, abs=1e-5)
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
