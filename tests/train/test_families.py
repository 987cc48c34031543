"""Every family trains through the embedder's own forward: the loss falls, and the saved
folder loads with ``umr.load_model`` and embeds exactly as the training forward did."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import umr
from umr.train import TrainConfig, info_nce
from umr.train.data import read_examples_jsonl
from umr.train.trainer import Trainer

from train_fixtures import multimodal_examples, text_examples

TOL = 1e-5


def _set_loss(embedder, examples) -> float:
    """InfoNCE of every query against every positive of the fixture (one fixed batch)."""
    with torch.no_grad():
        q = embedder.training_forward([e.query for e in examples])
        p = embedder.training_forward([e.positive for e in examples])
    return float(info_nce(q, p, temperature=0.05))


def _train_and_compare(model_dir, data, out, **options):
    config = TrainConfig(model=str(model_dir), data=[str(data)], output=str(out), progress=False,
                         **{"max_steps": 6, "batch_size": 4, "lr": 5e-3, "batching": "mixed", **options})
    examples, errors = read_examples_jsonl(data)
    assert not errors
    trainer = Trainer(config)
    before = _set_loss(trainer.embedder, examples)
    trainer.run()
    assert len(trainer.metrics) == 6
    after = _set_loss(trainer.embedder, examples)
    assert after < before - 0.05, (before, after)

    items = [e.query for e in examples] + [e.positive for e in examples]
    with torch.no_grad():
        trained = trainer.embedder.training_forward(items).numpy()
    loaded = umr.load_model(out, **config.model_options)
    vectors = loaded.embed(items).vectors
    assert np.abs(vectors - trained).max() <= TOL
    losses = [row["loss"] for row in trainer.metrics]
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 6 and record["final_loss"] == pytest.approx(losses[-1])
    assert all(int(fp, 16) for fp in (record["base_model"]["fingerprint"], record["data"][0]["fingerprint"]))
    assert record["config"]["lr"] == 5e-3
    return trainer, loaded


def test_text_lora(tiny_text_dir, tmp_path):
    trainer, _ = _train_and_compare(tiny_text_dir, text_examples(tmp_path / "d" / "train.jsonl"), tmp_path / "out",
                                    hard_negatives=1)
    assert trainer.lora_config is not None
    assert (tmp_path / "out" / "metrics.csv").is_file() and (tmp_path / "out" / "loss.png").is_file()


@pytest.mark.slow
def test_text_full_trains_every_layer(tiny_text_dir, tmp_path):
    trainer, loaded = _train_and_compare(tiny_text_dir, text_examples(tmp_path / "d" / "train.jsonl"),
                                         tmp_path / "out", full=True)
    assert trainer.lora_config is None
    before = dict(umr.load_model(tiny_text_dir).trainable_module().named_parameters())
    after = dict(loaded.trainable_module().named_parameters())
    assert before.keys() == after.keys()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    encoder = {n for n in before if ".encoder.layer." in n}
    assert encoder and encoder <= changed


@pytest.mark.slow
def test_gme(tiny_gme_dir, tmp_path):
    trainer, _ = _train_and_compare(tiny_gme_dir, multimodal_examples(tmp_path / "d" / "train.jsonl"),
                                    tmp_path / "out", model_options={"max_image_tokens": 16})
    names = trainer.trainable_names
    assert names and all("lora_" in n and "language_model" in n for n in names)


@pytest.mark.slow
def test_mmembed(tmp_path):
    from umr.testing import write_tiny_mmembed

    model = write_tiny_mmembed(tmp_path / "mm")
    trainer, _ = _train_and_compare(model, multimodal_examples(tmp_path / "d" / "train.jsonl"), tmp_path / "out")
    names = trainer.trainable_names
    assert any(n.startswith("multi_modal_projector.") for n in names)  # MM-Embed's recipe: projector + LoRA
    assert all(n.startswith("multi_modal_projector.") or "lora_" in n for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("uniir", [False, True])
def test_clip_sf(tmp_path, uniir):
    from umr.testing import write_tiny_clip, write_tiny_uniir_clip_sf

    model = write_tiny_uniir_clip_sf(tmp_path / "clip") if uniir else write_tiny_clip(tmp_path / "clip")
    _train_and_compare(model, multimodal_examples(tmp_path / "d" / "train.jsonl"), tmp_path / "out")
    assert (tmp_path / "out" / "clip_sf.pth").is_file() == uniir
