"""What a run does when numbers go wrong, and what its precision and dropout settings mean:
a learned temperature with the false-negative guard trains finite; a non-finite step stops the
run naming the step (exit 2, no model written) or is skipped and counted; LoRA dropout is on in
training steps and GradCache in one chunk equals plain training with it."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from umr.cli import main
from umr.train import TrainConfig, checkpoint, train
from umr.train.trainer import Trainer

from train_fixtures import text_examples, text_pairs, write_examples


def _losses(folder: Path) -> list[float]:
    with (folder / "metrics.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def _worst(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


def test_learned_temperature_with_the_false_negative_guard_trains_finite(tiny_text_dir, tmp_path):
    # each example's hard negative is its query's own text: it scores above the positive, so the
    # guard (margin 0) masks it in every step; before, that made τ's gradient NaN and a NaN model
    rows = [{"query": {"text": q}, "positive": {"text": p}, "negatives": [{"text": q}]} for q, p in text_pairs()]
    data = write_examples(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_text_dir), "--data", str(data), "--output", str(out),
                 "--learn-temperature", "--false-negative-margin", "0.0", "--hard-negatives", "1",
                 "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2", "--no-progress"]) == 0
    losses = _losses(out)
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(out / "model.safetensors")).values())
    record = json.loads((out / "training.json").read_text())
    assert math.isfinite(record["final_temperature"]) and record["final_temperature"] != pytest.approx(0.05)


def test_a_learned_temperature_is_held_at_its_bound_and_reported(tiny_text_dir, tmp_path, capsys):
    # positives identical to their queries: a sharper softmax always lowers the loss, so τ falls
    rows = [{"query": {"text": q}, "positive": {"text": q}} for q, _ in text_pairs()]
    data = write_examples(tmp_path / "train.jsonl", rows)
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_text_dir), "--data", str(data), "--output", str(out),
                 "--learn-temperature", "--temperature", "0.05", "--min-temperature", "0.049", "--lr", "0.1",
                 "--max-steps", "3", "--batch-size", "4", "--no-progress"]) == 0
    assert "the learned temperature reached its lower bound 0.049 at step 1" in capsys.readouterr().err
    record = json.loads((out / "training.json").read_text())
    assert record["temperature_at_bound_steps"] == 3 and record["final_temperature"] == pytest.approx(0.049)


def _run_poisoned_at_step_two(monkeypatch, tiny_text_dir, out: Path, *flags: str) -> int:
    """``umr train`` for 3 steps whose step 2 has a NaN loss; returns the exit code."""
    original = Trainer.loss_fn

    def poisoned(self, vectors, **options):
        loss, value = original(self, vectors, **options)
        if self.step == 1:  # while step 2 runs
            return loss * float("nan"), value * float("nan")
        return loss, value

    monkeypatch.setattr(Trainer, "loss_fn", poisoned)
    data = text_examples(out.parent / "train.jsonl")
    return main(["train", "--model", str(tiny_text_dir), "--data", str(data), "--output", str(out),
                 "--max-steps", "3", "--batch-size", "4", "--no-progress", *flags])


def test_a_non_finite_step_stops_the_run_naming_it(tiny_text_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _run_poisoned_at_step_two(monkeypatch, tiny_text_dir, out, "--save-every", "1") == 2
    error = capsys.readouterr().err
    assert "step 2: the loss is nan" in error and "--on-nonfinite skip" in error
    assert not (out / "model.safetensors").exists() and not (out / "training.json").exists()
    assert checkpoint.completed(out / "checkpoints") == [1]


def test_a_non_finite_step_is_skipped_and_counted_when_asked(tiny_text_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert _run_poisoned_at_step_two(monkeypatch, tiny_text_dir, out, "--on-nonfinite", "skip") == 0
    error = capsys.readouterr().err
    assert "step 2 skipped (the loss is nan" in error and "1 step(s) skipped so far" in error
    record = json.loads((out / "training.json").read_text())
    assert record["skipped_steps"] == [2] and record["steps"] == 3
    assert all(bool(torch.isfinite(t).all()) for t in load_file(str(out / "model.safetensors")).values())


def test_lora_dropout_in_grad_cache_with_one_chunk_equals_plain_training(tiny_text_dir, tmp_path):
    data = text_examples(tmp_path / "train.jsonl")

    def run(name, **extra):
        train(TrainConfig(model=str(tiny_text_dir), data=[str(data)], output=str(tmp_path / name), max_steps=2,
                          batch_size=4, lr=1e-2, hard_negatives=1, progress=False, **extra))
        return tmp_path / name

    plain = run("plain", lora_dropout=0.1)
    cached = run("cached", lora_dropout=0.1, grad_cache_chunk=64)  # two passes over one chunk
    assert _worst(plain, cached) <= 1e-5
    assert _losses(plain) == pytest.approx(_losses(cached), abs=1e-6)
    assert _worst(plain, run("no-dropout")) > 1e-4  # the dropout did act


def test_a_learned_temperature_below_its_bound_is_refused(tiny_text_dir, tmp_path, capsys):
    data = text_examples(tmp_path / "train.jsonl")
    assert main(["train", "--model", str(tiny_text_dir), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--learn-temperature", "--temperature", "0.005"]) == 2
    assert "lower bound (min_temperature 0.01), not at 0.005" in capsys.readouterr().err


def test_model_options_flags_add_to_the_config_files(tmp_path):
    from umr.cli import build_parser
    from umr.cli.train import config_from_args

    (tmp_path / "train.yaml").write_text("model: gme-2b\noutput: out\ndata: [d.jsonl]\n"
                                         "model_options: {min_image_tokens: 4, max_length: 900}\n")
    args = build_parser().parse_args(["train", "--config", str(tmp_path / "train.yaml"), "--max-image-tokens", "16",
                                      "--dtype", "bfloat16"])
    assert config_from_args(args).model_options == {"min_image_tokens": 4, "max_length": 900,
                                                    "max_image_tokens": 16, "dtype": "bfloat16"}


def test_bfloat16_weights_train_float32_parameters_under_one_autocast(tiny_text_dir, tmp_path):
    from umr.train.trainer import TrainingError, load_options

    data = text_examples(tmp_path / "train.jsonl")
    settings = dict(model=str(tiny_text_dir), data=[str(data)], output=str(tmp_path / "o"), batch_size=4, progress=False)
    assert load_options(TrainConfig(**settings, bf16=True)) == {"dtype": "bfloat16"}  # GME: not float32 on a GPU
    assert load_options(TrainConfig(**settings, bf16=True, full=True)) == {}  # full fine-tuning keeps float32
    trainer = Trainer(TrainConfig(**settings, model_options={"dtype": "bfloat16"}))  # --dtype bfloat16 without --bf16
    assert trainer.precision == {"frozen_weights": ["bfloat16"], "trainable_weights": "float32", "autocast": "bfloat16"}
    assert math.isfinite(trainer.train_step())
    assert trainer.params and all(p.dtype == torch.float32 for p in trainer.params)
    assert all(state["exp_avg"].dtype == torch.float32 for state in trainer.optimizer.state.values())
    with pytest.raises(TrainingError, match="float16"):
        Trainer(TrainConfig(**settings, model_options={"dtype": "float16"}))
