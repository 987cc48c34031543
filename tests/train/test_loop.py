"""The training loop around the step: items prepared ahead by the family's prefetching loader
train exactly as items prepared inline; an example whose image fails to decode when prepared is
left out and reported, the run goes on, and a resumed run leaves it out as the uninterrupted one
does; gradients averaged over two processes by the bucketed reducer."""

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

from train_fixtures import StopTraining, multimodal_examples, stopped_after

SRC = str(Path(__file__).parents[2] / "src")


def _run(model, data, out, *, workers, before=None, **options) -> Trainer:
    settings = dict(max_steps=3, batch_size=4, lr=5e-3, batching="mixed", grad_cache_chunk=3, progress=False)
    trainer = Trainer(TrainConfig(model=str(model), data=[str(data)], output=str(out), **{**settings, **options}))
    trainer.embedder.prefetch_workers = workers
    if before is not None:
        before()
    trainer.run()
    return trainer


@pytest.mark.slow
def test_prefetched_items_train_as_inline_ones_and_a_broken_image_is_left_out(tmp_path):
    from umr.testing import write_tiny_clip

    model = write_tiny_clip(tmp_path / "clip")
    inline = _run(model, multimodal_examples(tmp_path / "a" / "train.jsonl"), tmp_path / "inline", workers=0)
    ahead = _run(model, multimodal_examples(tmp_path / "b" / "train.jsonl"), tmp_path / "ahead", workers=1)
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("inline", "ahead"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    assert [r["loss"] for r in inline.metrics] == pytest.approx([r["loss"] for r in ahead.metrics], abs=1e-6)

    data = multimodal_examples(tmp_path / "c" / "train.jsonl")
    # a readable header, a body cut short: drawing the example passes, preparing its items fails
    _truncate(tmp_path / "c" / "images" / "red.png")
    trainer = _run(model, data, tmp_path / "broken", workers=1)
    assert trainer.step == 3
    errors = [json.loads(line) for line in (tmp_path / "broken" / "errors.jsonl").read_text().splitlines()]
    assert errors and all(f"{data}:" in e["error"] and e["line"] in (1, 2) for e in errors)
    assert json.loads((tmp_path / "broken" / "training.json").read_text())["skipped_examples"] == len(errors)


def _truncate(image: Path) -> None:
    """Keep the PNG's header (its size reads) and cut the pixels short (decoding fails)."""
    image.write_bytes(image.read_bytes()[:60])


def _errors(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_bad_examples_found_when_drawn_or_prepared_stay_out_after_resume(tmp_path):
    from umr.testing import write_tiny_clip
    from umr.train import checkpoint

    model = write_tiny_clip(tmp_path / "clip")
    data = multimodal_examples(tmp_path / "train.jsonl")  # 12 examples; red's are lines 1 and 2
    _truncate(tmp_path / "images" / "red.png")
    with data.open("a") as handle:  # line 13: bad as soon as it is drawn
        handle.write(json.dumps({"query": {"text": "q"}, "positive": {"image": "images/gone.png"}}) + "\n")
    options = dict(workers=0, max_steps=6, save_every=2, grad_cache_chunk=None, schedule="constant", seed=3)
    whole = _run(model, data, tmp_path / "whole", **options)
    found = _errors(tmp_path / "whole")
    assert sorted(e["line"] for e in found) == [1, 2, 13]  # each once, though drawn again in the second epoch
    assert all(e["error"].startswith(f"{data}:{e['line']}: ") for e in found)
    assert "truncated" in found[0]["error"] and "gone.png" in {e["line"]: e for e in found}[13]["error"]
    assert json.loads((tmp_path / "whole" / "training.json").read_text())["skipped_examples"] == 3
    assert {0, 1, 12}.isdisjoint(i for i, _ in whole.data.draw([0, 1, 12]))

    with stopped_after(3), pytest.raises(StopTraining):
        _run(model, data, tmp_path / "cut", **options)
    saved = checkpoint.load_latest(tmp_path / "cut" / "checkpoints")
    assert saved["step"] == 2 and {e["line"] for e in saved["bad_examples"][0]} & {1, 2}  # found when prepared
    _run(model, data, tmp_path / "cut", resume=True, **options)
    assert _errors(tmp_path / "cut") == found
    a, b = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "cut"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


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
