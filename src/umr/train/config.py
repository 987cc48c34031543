"""Every setting of a training run, with the command line's names (``--lora-r`` is ``lora_r``).

A YAML config takes the same names; command-line flags override it
(``TrainConfig.from_yaml(path, **overrides)``), ``model_options`` key by key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .data import Batching, Source


@dataclass
class TrainConfig:
    #: base model: a short name, a hub id or a folder (a trained umr model continues from its weights)
    model: str
    #: sources: paths (generic JSONL or an M-BEIR folder) or mappings with path/weight/instruction/name/tasks
    data: list[Any]
    #: the folder to write (the model, training.json, metrics.csv, loss.png, checkpoints/)
    output: str
    epochs: float = 1.0
    #: optimizer steps in all; overrides ``epochs``
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 0.0
    #: examples per process per micro-step (the global batch is this x processes x grad_accum)
    batch_size: int = 32
    #: InfoNCE temperature τ: used as given, or the start of a learned one
    temperature: float = 0.05
    learn_temperature: bool = False
    #: a learned τ is held at or above this (CLIP's bound on its logit scale 1/τ: 100)
    min_temperature: float = 0.01
    #: full fine-tuning instead of LoRA
    full: bool = False
    lora_r: int = 8
    lora_alpha: int = 64
    #: dropout on LoRA's input during training steps (the model's own dropout stays off)
    lora_dropout: float = 0.0
    #: peft target_modules: a regex over module names or a list of name suffixes (default: the family's)
    lora_targets: Any = None
    #: module-name prefixes trained fully beside LoRA (default: the family's, e.g. MM-Embed's projector)
    train_modules: list[str] | None = None
    #: hard negatives per example per step (sampled afresh each epoch, seeded); 0 = in-batch only
    hard_negatives: int = 0
    #: GradCache: at most this many items per forward pass (None: the whole batch at once)
    grad_cache_chunk: int | None = None
    grad_accum: int = 1
    grad_checkpointing: bool = False
    #: frozen weights in bfloat16 (LoRA; full fine-tuning keeps float32 weights) and the step under
    #: bf16 autocast; trainable weights and optimizer state stay float32
    bf16: bool = False
    #: a step whose loss or gradient is not finite: "stop" the run naming the step, or "skip" it
    on_nonfinite: Literal["stop", "skip"] = "stop"
    #: warm-up steps (an int) or a fraction of all steps (a float < 1)
    warmup: float = 0.0
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float | None = 1.0
    #: write a resumable checkpoint every N optimizer steps (and at the end); 0 = only at the end
    save_every: int = 0
    #: keep this many checkpoints (oldest removed first)
    keep_checkpoints: int = 2
    seed: int = 0
    #: continue from the last checkpoint in ``output``
    resume: bool = False
    #: mask a negative scoring more than this above the positive (None: off)
    false_negative_margin: float | None = None
    batching: Batching = "homogeneous"
    #: also keep the LoRA adapter (``OUTPUT/adapter``) beside the merged model
    save_adapter: bool = False
    device: str = "cpu"
    #: loader options for the base model (e.g. max_image_tokens, dtype)
    model_options: dict[str, Any] = field(default_factory=dict)
    #: evaluate on this BEIR-style or M-BEIR folder every ``eval_every`` steps and at the end
    eval_data: str | None = None
    eval_every: int = 0
    eval_benchmark: Literal["beir", "mbeir"] = "beir"
    log_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, Path, dict)):
            self.data = [self.data]
        self.data = [Source.parse(d) for d in self.data]
        checks = [(self.batch_size >= 1, "batch_size must be at least 1"),
                  (self.grad_accum >= 1, "grad_accum must be at least 1"),
                  (self.lr > 0, "lr must be positive"),
                  (0 <= self.lora_dropout < 1, "lora_dropout must be in [0, 1)"),
                  (self.on_nonfinite in ("stop", "skip"), "on_nonfinite must be stop or skip"),
                  (self.hard_negatives >= 0, "hard_negatives must be 0 or more"),
                  (self.max_steps is None or self.max_steps >= 1, "max_steps must be at least 1"),
                  (self.epochs > 0, "epochs must be positive"),
                  (self.schedule in ("linear", "cosine", "constant"), "schedule must be linear, cosine or constant"),
                  (self.batching in ("homogeneous", "mixed"), "batching must be homogeneous or mixed"),
                  (self.grad_cache_chunk is None or self.grad_cache_chunk >= 1, "grad_cache_chunk must be at least 1"),
                  (bool(self.data), "no training data")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """The config in ``path``, with ``overrides`` (those not None) on top."""
        import yaml

        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a training config is a mapping of settings")
        values = {k.replace("-", "_"): v for k, v in values.items()}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {', '.join(unknown)}")
        base = Path(path).parent
        if "data" in values:  # relative data paths are relative to the config file
            values["data"] = [_relative_source(d, base) for d in
                              (values["data"] if isinstance(values["data"], list) else [values["data"]])]
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "model_options" in overrides:  # a flag (--max-image-tokens, --dtype) adds to the file's options
            values["model_options"] = {**(values.get("model_options") or {}), **overrides.pop("model_options")}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"] = [dataclasses.asdict(s) for s in self.data]
        return out


def _relative_source(value: Any, base: Path) -> Any:
    def fix(p: str) -> str:
        return p if Path(p).expanduser().is_absolute() else str(base / p)

    if isinstance(value, str):
        return fix(value)
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": fix(value["path"])}
    return value
