"""What a finished run leaves in its output folder beside the weights: the base model's other files,
and the bad examples every process found, each once, in ``errors.jsonl``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

#: files of a base model folder that are not copied into the output (the trained weights replace them)
_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt", ".safetensors.index.json", ".bin.index.json")
#: what a umr training run writes; not copied when continuing from a trained model
RUN_FILES = {"checkpoints", "tensorboard", "training.json", "metrics.csv", "loss.png", "errors.jsonl", "adapter"}


def copy_model_files(source: Path, target: Path) -> None:
    """The base folder's config, tokenizer and processor files (not its weights, not a previous run's files)."""
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source)
        if not path.is_file() or rel.parts[0] in RUN_FILES or rel.parts[0].startswith("."):
            continue
        if path.name.endswith(_WEIGHTS):
            continue
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target / rel)


def unique_errors(bad_examples: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every process's bad examples (each process's list, in rank order), each example once, without
    the training-data index that identifies it."""
    errors: dict[int, dict[str, Any]] = {}
    for found in bad_examples:
        for entry in found:
            errors.setdefault(entry["index"], {k: v for k, v in entry.items() if k != "index"})
    return list(errors.values())


def write_errors(path: Path, errors: list[dict[str, Any]]) -> None:
    """``errors.jsonl``: one bad example a line (nothing written when there is none)."""
    if errors:
        with path.open("w", encoding="utf-8") as handle:
            for error in errors:
                handle.write(json.dumps(error) + "\n")
