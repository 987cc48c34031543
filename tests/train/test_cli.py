"""``umr train`` and its YAML config; the memory savers (checkpointing, bf16, GradCache) in a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import umr
from umr.cli import main
from umr.train import TrainConfig
from umr.core.items import Item

from train_fixtures import backward, text_examples

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
        backward(model, items)
        return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}

    plain = grads(umr.load_model(tiny_text_dir))
    checkpointed_model = umr.load_model(tiny_text_dir)
    assert checkpointed_model.enable_gradient_checkpointing() == 2  # the two BERT layers
    checkpointed = grads(checkpointed_model)
    assert plain.keys() == checkpointed.keys()
    assert max(float((plain[n] - checkpointed[n]).abs().max()) for n in plain) <= 1e-6


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def _losses(folder: Path) -> list[float]:
    with (folder / "metrics.csv").open() as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_cli_run_with_every_memory_saver(tiny_text_dir, tmp_path):
    data = text_examples(tmp_path / "train.jsonl")
    common = ["--model", str(tiny_text_dir), "--data", str(data), "--max-steps", "2", "--batch-size", "4",
              "--grad-accum", "2", "--learn-temperature", "--lr", "1e-2", "--hard-negatives", "1", "--no-progress"]

    def run(name, *extra):
        assert main(["train", *common, "--output", str(tmp_path / name), *extra]) == 0
        return tmp_path / name

    plain = run("plain")
    out = run("savers", "--grad-cache-chunk", "3", "--grad-checkpointing", "--save-adapter",
              "--eval-data", str(STDLIB_DOCS), "--eval-every", "1")
    # GradCache, checkpointing and evaluation change memory and time, not the numbers
    a, b = _weights(plain), _weights(out)
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert _losses(out) == pytest.approx(_losses(plain), abs=1e-5)
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and record["config"]["grad_cache_chunk"] == 3
    assert 0 < record["final_eval"]["stdlib-docs/ndcg@10"] <= 1
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2]
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert umr.load_model(out).encode_queries(["hello"]).shape == (1, 32)

    # bf16: frozen weights bfloat16, trainable float32, one autocast: close to float32, not equal
    half = run("bf16", "--bf16")
    record = json.loads((half / "training.json").read_text())
    assert record["precision"] == {"frozen_weights": ["bfloat16"], "trainable_weights": "float32",
                                   "autocast": "bfloat16"}
    assert _losses(half) == pytest.approx(_losses(plain), abs=2e-2)
    base, c = _weights(tiny_text_dir), _weights(half)
    change = torch.cat([(a[k] - base[k]).flatten() for k in a])
    change_bf16 = torch.cat([(c[k] - base[k]).flatten() for k in a])
    cosine = float(torch.nn.functional.cosine_similarity(change, change_bf16, dim=0))
    assert float(change.norm()) > 0.1 and cosine > 0.98, (float(change.norm()), cosine)  # measured: 0.993
