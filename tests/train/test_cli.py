"""``umr train`` and its YAML config; the memory savers (checkpointing, bf16, GradCache) in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import umr
from umr.cli import main
from umr.train import TrainConfig
from umr.train.grad_cache import backward_step
from umr.train.loss import info_nce
from umr.types import Item

from train_fixtures import text_examples

STDLIB_DOCS = Path(__file__).parents[1] / "fixtures" / "eval" / "stdlib-docs"


def test_yaml_config_with_command_line_overrides(tmp_path):
    data = text_examples(tmp_path / "data" / "train.jsonl")
    config_file = tmp_path / "train.yaml"
    config_file.write_text(
        "model: minilm\noutput: out\nlora-r: 4\nlr: 0.001\nbatch_size: 2\n"
        "data:\n  - path: data/train.jsonl\n    weight: 2\n    instruction: Find the answer.\n")
    config = TrainConfig.from_yaml(config_file, lr=5e-4, batch_size=None)
    assert config.lr == 5e-4 and config.batch_size == 2 and config.lora_r == 4
    assert config.data[0].path == str(data) and config.data[0].weight == 2
    assert config.data[0].instruction == "Find the answer."
    config_file.write_text("model: minilm\noutput: out\ndata: [x]\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_yaml(config_file)


def test_cli_usage_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--model", "minilm", "--output", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--model", "minilm", "--data", str(tmp_path / "none.jsonl"),
                 "--output", str(tmp_path / "o"), "--batch-size", "0"]) == 2
    assert "batch_size" in capsys.readouterr().err
    assert main(["train", "--model", "minilm", "--data", str(tmp_path / "none.jsonl"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "none.jsonl" in capsys.readouterr().err


def test_gradient_checkpointing_keeps_gradients(tiny_text_dir):
    items = ([Item.query(t) for t in ("a b", "c d e", "f")], [Item.candidate(t) for t in ("x", "y z", "w")], [])

    def grads(model):
        module = model.trainable_module()
        module.zero_grad(set_to_none=True)
        backward_step(model, items, lambda q, p, n: (info_nce(q, p, n),) * 2)
        return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}

    plain = grads(umr.load_model(tiny_text_dir))
    checkpointed_model = umr.load_model(tiny_text_dir)
    assert checkpointed_model.enable_gradient_checkpointing() == 2  # the two BERT layers
    checkpointed = grads(checkpointed_model)
    assert plain.keys() == checkpointed.keys()
    assert max(float((plain[n] - checkpointed[n]).abs().max()) for n in plain) <= 1e-6


@pytest.mark.slow
def test_cli_run_with_every_memory_saver(tiny_text_dir, tmp_path):
    data = text_examples(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    assert main(["train", "--model", str(tiny_text_dir), "--data", str(data), "--output", str(out),
                 "--max-steps", "2", "--batch-size", "4", "--grad-cache-chunk", "3", "--grad-accum", "2",
                 "--grad-checkpointing", "--bf16", "--learn-temperature", "--save-adapter", "--no-progress",
                 "--eval-data", str(STDLIB_DOCS), "--eval-every", "1"]) == 0
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and torch.isfinite(torch.tensor(record["final_loss"]))
    assert record["config"]["grad_cache_chunk"] == 3 and record["config"]["bf16"] is True
    assert 0 < record["final_eval"]["stdlib-docs/ndcg@10"] <= 1
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert umr.load_model(out).encode_queries(["hello"]).shape == (1, 32)
