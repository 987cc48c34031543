"""``umr train``: contrastive fine-tuning (LoRA or full) of any umr family; see :mod:`umr.train`."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..train import TrainConfig, TrainingError, train
from .common import UsageError

#: flag -> (TrainConfig name, argparse options); every flag defaults to None so that a
#: --config file's value stands unless the flag is given
_FLAGS = {
    "--epochs": dict(type=float, help="passes over the data (default 1)"),
    "--max-steps": dict(type=int, help="optimizer steps in all (overrides --epochs)"),
    "--lr": dict(type=float, help="peak learning rate (default 1e-4)"),
    "--batch-size": dict(type=int, help="examples per process per micro-step (default 32)"),
    "--temperature": dict(type=float, help="InfoNCE temperature (default 0.05)"),
    "--min-temperature": dict(type=float, help="lower bound of a learned temperature (default 0.01)"),
    "--on-nonfinite": dict(choices=["stop", "skip"], help="a step with a non-finite loss or gradient: stop the "
                                                          "run (default) or skip the step with a warning"),
    "--lora-r": dict(type=int, help="LoRA rank (default 8)"),
    "--lora-alpha": dict(type=int, help="LoRA alpha (default 64)"),
    "--lora-dropout": dict(type=float, help="dropout on LoRA's input during training (default 0)"),
    "--lora-targets": dict(help="LoRA target modules: a regex over module names (default: the family's)"),
    "--train-modules": dict(nargs="+", help="module-name prefixes trained fully beside LoRA (MM-Embed: multi_modal_projector)"),
    "--hard-negatives": dict(type=int, help="hard negatives per example per step, sampled each epoch (default 0)"),
    "--grad-cache-chunk": dict(type=int, help="GradCache: at most N items per forward pass"),
    "--grad-accum": dict(type=int, help="micro-batches per optimizer step (default 1)"),
    "--warmup": dict(type=float, help="warm-up steps, or a fraction of all steps if < 1 (default 0)"),
    "--schedule": dict(choices=["linear", "cosine", "constant"], help="decay after warm-up (default linear)"),
    "--save-every": dict(type=int, help="checkpoint every N steps (default: only at the end)"),
    "--seed": dict(type=int, help="seed of the batch order and negative sampling (default 0)"),
    "--false-negative-margin": dict(type=float, help="mask negatives scoring this much above the positive"),
    "--batching": dict(choices=["homogeneous", "mixed"], help="batches from one source each (default) or mixed"),
    "--eval-data": dict(help="BEIR-style or M-BEIR folder to evaluate on at the end (and every --eval-every steps)"),
    "--eval-every": dict(type=int, help="evaluate every N steps"),
    "--eval-benchmark": dict(choices=["beir", "mbeir"], help="format of --eval-data (default beir)"),
    "--device": dict(help="cpu, cuda, cuda:1, ... (default cpu; under accelerate: set per process)"),
}
_SWITCHES = {
    "--full": "full fine-tuning instead of LoRA",
    "--learn-temperature": "learn the temperature (starting from --temperature)",
    "--grad-checkpointing": "recompute activations in backward to save memory",
    "--bf16": "bfloat16 frozen weights and autocast (trainable weights and optimizer state stay float32)",
    "--resume": "continue from the last checkpoint in --output",
    "--save-adapter": "also keep the LoRA adapter in OUTPUT/adapter (the model itself is saved merged)",
}


def add_parser(sub) -> None:
    parser = sub.add_parser("train", help="fine-tune a model contrastively (LoRA or full) on training JSONL / M-BEIR")
    parser.add_argument("--model", help="base model: short name, hub id or folder")
    parser.add_argument("--data", action="append", help="training JSONL or M-BEIR folder (repeat for a mixture; "
                                                        "weights and instructions per source in --config)")
    parser.add_argument("--output", help="folder for the trained model, training.json, metrics and checkpoints")
    parser.add_argument("--config", type=Path, help="YAML with the same names (lora_r, data: [{path, weight}], ...)")
    for flag, options in _FLAGS.items():
        parser.add_argument(flag, default=None, **options)
    for flag, text in _SWITCHES.items():
        parser.add_argument(flag, action="store_true", default=None, help=text)
    parser.add_argument("--max-image-tokens", type=int, default=None, help="MLLM models: most tokens per image")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="dtype the base model loads in (default: the family's; bfloat16 under --bf16)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace):
    names = [f.lstrip("-").replace("-", "_") for f in [*_FLAGS, *_SWITCHES]]
    overrides = {name: getattr(args, name) for name in names}
    overrides.update(model=args.model, data=args.data, output=args.output)
    model_options = {name: value for name, value in (("max_image_tokens", args.max_image_tokens),
                                                     ("dtype", args.dtype)) if value is not None}
    if model_options:  # added to a --config file's model_options, not replacing them
        overrides["model_options"] = model_options
    if args.no_progress:
        overrides["progress"] = False
    try:
        if args.config is not None:
            if not args.config.is_file():
                raise UsageError(f"no such config file: {args.config}")
            return TrainConfig.from_yaml(args.config, **overrides)
        missing = [f"--{n}" for n in ("model", "data", "output") if overrides[n] is None]
        if missing:
            raise UsageError(f"{', '.join(missing)} required (or give them in --config)")
        return TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None


def run(args) -> int:
    config = config_from_args(args)
    try:
        output = train(config)
    except (TrainingError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(f"umr train: model written to {output} (load it with umr.load_model({str(output)!r}))")
    return 0
