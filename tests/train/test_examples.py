"""The recipes in examples/ are GPU recipes that run: each YAML loads as a training config for
a GPU in bfloat16, and one step of it trains a tiny model of its family on CPU (only the model,
data, device, batch and length replaced), so a setting the family refuses, or one that breaks
the step, fails here."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from umr.train import TrainConfig
from umr.train.trainer import Trainer

from train_fixtures import multimodal_examples

EXAMPLES = Path(__file__).parents[2] / "examples"


@pytest.fixture(scope="module")
def tiny_mmembed_dir(tmp_path_factory) -> Path:
    from umr.testing import write_tiny_mmembed

    return write_tiny_mmembed(tmp_path_factory.mktemp("mm") / "mm")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gme.yaml", "mmembed_stage1.yaml", "mmembed_continual.yaml"])
def test_example_recipe_is_for_a_gpu_and_trains_a_step(name, tiny_gme_dir, tiny_mmembed_dir, tmp_path):
    recipe = TrainConfig.from_yaml(EXAMPLES / name)
    assert recipe.device == "cuda" and recipe.bf16 and not recipe.full
    model = tiny_gme_dir if name == "gme.yaml" else tiny_mmembed_dir
    data = multimodal_examples(tmp_path / "d" / "train.jsonl")
    config = TrainConfig.from_yaml(EXAMPLES / name, model=str(model), data=[str(data)], output=str(tmp_path / "out"),
                                   device="cpu", batch_size=2, max_steps=1, progress=False)
    assert {k: v for k, v in config.to_dict().items() if k not in ("model", "data", "output", "device", "batch_size",
                                                                   "max_steps", "progress")} == \
        {k: v for k, v in recipe.to_dict().items() if k not in ("model", "data", "output", "device", "batch_size",
                                                                "max_steps", "progress")}
    trainer = Trainer(config)
    assert trainer.precision["autocast"] == "bfloat16" and trainer.precision["trainable_weights"] == "float32"
    assert math.isfinite(trainer.train_step())
