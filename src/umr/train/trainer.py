"""The training loop: ``train(config) -> output folder``.

One optimizer step = ``grad_accum`` micro-batches; a micro-batch is ``batch_size`` examples
on each process (their union, the global micro-batch, shares one softmax). Modules stay in
eval mode (dropout off): the training forward is then exactly the embedding forward, and
GradCache's second pass recomputes the first exactly.

Distributed runs (``accelerate launch --multi_gpu`` or ``torchrun``: the ``WORLD_SIZE`` /
``RANK`` / ``LOCAL_RANK`` environment) join a process group (gloo on CPU, nccl on GPU); each
process takes its slice of every global micro-batch, and gradients are averaged with
``all_reduce`` after backward (the model is not wrapped in DDP: families call their own
sub-modules, which a DDP wrapper would not see).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..models.base import Embedder, Trainable
from ..models.identity import files_fingerprint
from ..types import Item
from . import checkpoint, lora
from .config import TrainConfig
from .data import BatchPlan, TrainingData, sample_negatives
from .grad_cache import backward_step
from .loss import Temperature, distributed_info_nce, world
from .provenance import source_fingerprint

#: files of a base model folder that are not copied into the output (the trained weights replace them)
_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt", ".safetensors.index.json", ".bin.index.json")
#: what a umr training run writes; not copied when continuing from a trained model
RUN_FILES = {"checkpoints", "tensorboard", "training.json", "metrics.csv", "loss.png", "errors.jsonl", "adapter"}


#: settings a resumed run may change (how long, how often to save or log, where to run)
RESUMABLE_CHANGES = {"resume", "max_steps", "epochs", "progress", "save_every", "keep_checkpoints", "log_every",
                     "save_adapter", "device", "eval_data", "eval_every", "eval_benchmark"}


class TrainingError(RuntimeError):
    """A run that cannot start or continue (no usable examples, a family that cannot train, ...)."""


@dataclass
class Position:
    """Where the data stream is: micro-batch ``index`` of ``epoch``."""

    epoch: int = 0
    index: int = 0


def init_distributed(device: str) -> str:
    """Join the process group a launcher set up (if any); returns this process's device
    (``cuda`` becomes ``cuda:LOCAL_RANK``, one GPU per process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device == "cuda" and "LOCAL_RANK" in os.environ:
            device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device


def schedule_factor(step: int, *, total: int, warmup: int, kind: str) -> float:
    """Learning-rate multiplier after ``step`` optimizer steps: linear warm-up, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return 1.0 - progress


def _autocast(config: TrainConfig):
    if not config.bf16:
        return contextlib.nullcontext
    device_type = "cuda" if config.device.startswith("cuda") else "cpu"
    return lambda: torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def _average_gradients(params: list[torch.nn.Parameter]) -> None:
    _, size = world()
    if size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= size


class Trainer:
    """Holds a run's state; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig):
        from ..models.registry import load_model, model_folder

        self.config = config
        self.device = init_distributed(config.device)
        self.rank, self.world_size = world()
        self.output = Path(config.output)
        # first (counting only: examples are checked when drawn): a bad path fails before a large model loads
        self.data = TrainingData(config.data)
        torch.manual_seed(config.seed)
        self.base_folder = model_folder(config.model)
        self.embedder: Embedder = load_model(config.model, device=self.device, **config.model_options)
        if not isinstance(self.embedder, Trainable):
            raise TrainingError(f"{type(self.embedder).__name__} cannot be fine-tuned (no training contract)")
        self.data.check = self.embedder.check
        self.plan = BatchPlan(self.data.sizes, self.data.weights, global_batch=config.batch_size * self.world_size,
                              seed=config.seed, batching=config.batching, keep_short=self.world_size == 1)
        self.micro_per_epoch = len(self.plan.epoch(0))
        if self.micro_per_epoch == 0:
            raise TrainingError(f"fewer examples than one global batch ({config.batch_size} x {self.world_size} "
                                f"processes): lower --batch-size")
        self.module = self.embedder.trainable_module()
        self.module.eval()
        self.lora_config = None
        if not config.full:
            targets = config.lora_targets if config.lora_targets is not None else self.embedder.lora_targets
            self.lora_config = lora.add_lora(self.module, r=config.lora_r, alpha=config.lora_alpha,
                                             targets=targets, dropout=config.lora_dropout)
        train_modules = (list(config.train_modules) if config.train_modules is not None
                         else list(self.embedder.train_modules))
        self.trainable_count = lora.select_trainable(self.module, full=config.full, train_modules=train_modules)
        if config.grad_checkpointing:
            self.embedder.enable_gradient_checkpointing()
        self.temperature = Temperature(config.temperature, learn=config.learn_temperature)
        self.trainable_names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        optimised = self.params + ([self.temperature.log_inverse] if config.learn_temperature else [])
        self.optimizer = torch.optim.AdamW(optimised, lr=config.lr, weight_decay=config.weight_decay)

        per_epoch = max(1, self.micro_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        warmup = config.warmup
        self.warmup_steps = int(round(warmup * self.total_steps)) if 0 < warmup < 1 else int(warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule_factor(
            s, total=self.total_steps, warmup=self.warmup_steps, kind=config.schedule))
        self.step = 0
        self.position = Position()
        self.metrics: list[dict[str, Any]] = []
        self._epoch_batches: tuple[int, list[list[int]]] | None = None

    # -- data ------------------------------------------------------------------------------------

    def next_micro_batch(self) -> tuple[list[Item], list[Item], list[Item]]:
        """This process's (queries, positives, hard negatives) of the next global micro-batch."""
        if self.position.index >= self.micro_per_epoch:
            self.position = Position(self.position.epoch + 1, 0)
        epoch = self.position.epoch
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            self._epoch_batches = (epoch, self.plan.epoch(epoch))
        batch = self._epoch_batches[1][self.position.index]
        self.position.index += 1
        queries, positives, negatives = [], [], []
        for i, example in self.data.draw(batch, rank=self.rank, world=self.world_size):
            queries.append(example.query)
            positives.append(example.positive)
            negatives.extend(sample_negatives(example, self.config.hard_negatives, seed=self.config.seed,
                                              epoch=epoch, index=i))
        return queries, positives, negatives

    # -- one optimizer step -------------------------------------------------------------------------

    def loss_fn(self, q: torch.Tensor, p: torch.Tensor, n: torch.Tensor):
        return distributed_info_nce(q, p, n, temperature=self.temperature(),
                                    false_negative_margin=self.config.false_negative_margin)

    def train_step(self) -> float:
        config = self.config
        total = 0.0
        for _ in range(config.grad_accum):
            groups = self.next_micro_batch()
            total += backward_step(self.embedder, groups, self.loss_fn, chunk=config.grad_cache_chunk,
                                   scale=1.0 / config.grad_accum, autocast=_autocast(config))
        _average_gradients(self.params)
        if config.learn_temperature:
            _average_gradients([self.temperature.log_inverse])
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.temperature.zero_grad(set_to_none=True)
        self.step += 1
        return total / config.grad_accum

    # -- checkpoints ---------------------------------------------------------------------------------

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> None:
        if self.rank == 0:
            checkpoint.save(self.output / "checkpoints", self.step, {
                "step": self.step, "epoch": self.position.epoch, "index": self.position.index,
                "trainable": self.trainable_state(), "temperature": self.temperature.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": checkpoint.rng_state(), "metrics": self.metrics, "data_errors": self.data.error_state(),
                "config": self.config.to_dict(),
            }, keep=self.config.keep_checkpoints)
        if self.world_size > 1:
            dist.barrier()

    def restore(self) -> bool:
        state = checkpoint.load_latest(self.output / "checkpoints")
        if state is None:
            return False
        before, now = state["config"], self.config.to_dict()
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            raise TrainingError(f"--resume: the checkpoint in {self.output} was trained with other "
                                f"{', '.join(changed)}; resume with the same settings (or a new --output)")
        named = dict(self.module.named_parameters())
        missing = set(state["trainable"]) - set(named)
        if missing:
            raise TrainingError(f"the checkpoint in {self.output} does not fit this model/LoRA setup "
                                f"({sorted(missing)[:3]} unknown)")
        with torch.no_grad():
            for name, value in state["trainable"].items():
                named[name].copy_(value)
        self.temperature.load_state_dict(state["temperature"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.position = Position(int(state["epoch"]), int(state["index"]))
        self.metrics = list(state["metrics"])
        self.data.restore_errors(state.get("data_errors", []))
        return True

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Path:
        from tqdm.auto import tqdm

        config = self.config
        if config.resume:
            resumed = self.restore()
            if self.rank == 0:
                print(f"umr train: resuming at step {self.step}" if resumed else
                      f"umr train: no checkpoint in {self.output}/checkpoints; starting afresh", file=sys.stderr)
        elif checkpoint.completed(self.output / "checkpoints"):
            raise TrainingError(f"{self.output} already holds checkpoints: pass --resume to continue, "
                                f"or choose another --output")
        self.output.mkdir(parents=True, exist_ok=True)
        logger = MetricsLog(self.output, enabled=self.rank == 0, keep=self.metrics)
        examples_per_step = config.batch_size * self.world_size * config.grad_accum
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not config.progress or self.rank != 0)
        started = time.perf_counter()
        done_here = 0
        while self.step < self.total_steps:
            lr = self.scheduler.get_last_lr()[0]
            loss = self.train_step()
            done_here += 1
            rate = done_here * examples_per_step / max(1e-9, time.perf_counter() - started)
            row = {"step": self.step, "epoch": self.position.epoch, "loss": loss, "lr": lr,
                   "temperature": self.temperature.value, "examples_per_s": rate}
            self.metrics.append(row)
            if self.step % max(1, config.log_every) == 0 or self.step == self.total_steps:
                logger.write(row)
            bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{rate:.1f}")
            bar.update(1)
            if (config.eval_data and config.eval_every and self.step % config.eval_every == 0
                    and self.step < self.total_steps):  # the last step's evaluation is the final one
                logger.write_eval(self.step, self.evaluate())
            if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        final_eval = self.evaluate() if config.eval_data else None
        if final_eval is not None:
            logger.write_eval(self.step, final_eval)
        if self.rank == 0:
            self.save_model(final_eval)
            logger.close(plot=True)
        if self.world_size > 1:
            dist.barrier()
        return self.output

    def evaluate(self) -> dict[str, float]:
        """Headline metrics of the current model on ``eval_data`` (rank 0 only; others get {})."""
        if self.rank != 0:
            return {}
        from ..eval import evaluate, load_beir, load_mbeir

        data = self.config.eval_data
        tasks = load_mbeir(data) if self.config.eval_benchmark == "mbeir" else load_beir(data)
        results = evaluate(self.embedder, tasks)
        return {f"{r['task']}/{k}": v for r in results["tasks"] for k, v in r["metrics"].items()
                if isinstance(v, (int, float))}

    def save_model(self, final_eval: dict[str, float] | None) -> None:
        """The trained model (LoRA merged) in ``output``, loadable by ``umr.load_model``."""
        if self.lora_config is not None and self.config.save_adapter:
            lora.save_adapter(self.module, self.lora_config, self.output / "adapter", base_model=str(self.base_folder))
        if self.lora_config is not None:
            lora.merge(self.module)
        from ..models.registry import quiet_transformers

        copy_model_files(self.base_folder, self.output)
        with quiet_transformers():
            self.embedder.save_pretrained(self.output)
        record = {
            "base_model": {"name": self.config.model, "folder": str(self.base_folder),
                           "fingerprint": files_fingerprint(self.base_folder)},
            "data": [{"path": s.path, "name": s.label, "weight": s.weight, "instruction": s.instruction,
                      "tasks": s.tasks, "fingerprint": source_fingerprint(Path(s.path))} for s in self.config.data],
            "examples": len(self.data), "skipped_examples": len(self.data.errors),
            "config": self.config.to_dict(), "processes": self.world_size,
            "trainable_parameters": self.trainable_count,
            "steps": self.step, "epochs_seen": self.position.epoch + 1,
            "final_loss": self.metrics[-1]["loss"] if self.metrics else None,
            "final_temperature": self.temperature.value,
            "final_eval": final_eval,
            "tensorboard": "tensorboard/" if _has_tensorboard() else "not installed (pip install tensorboard)",
        }
        write_json_atomic(self.output / "training.json", record)
        if self.data.errors:
            with (self.output / "errors.jsonl").open("w", encoding="utf-8") as handle:
                for error in self.data.errors:
                    handle.write(json.dumps(error.to_dict()) + "\n")


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


def write_json_atomic(path: Path, value: Any) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=2, default=str), encoding="utf-8")
    os.replace(temporary, path)


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsLog:
    """``metrics.csv`` (rewritten from the kept rows on resume), TensorBoard, and ``loss.png`` at the end."""

    FIELDS = ["step", "epoch", "loss", "lr", "temperature", "examples_per_s"]

    def __init__(self, output: Path, *, enabled: bool, keep: list[dict[str, Any]]):
        self.enabled = enabled
        self.output = output
        self.rows = keep
        self.writer = None
        if not enabled:
            return
        self.csv_file = (output / "metrics.csv").open("w", newline="", encoding="utf-8")
        self.csv = csv.DictWriter(self.csv_file, fieldnames=self.FIELDS)
        self.csv.writeheader()
        for row in keep:
            self.csv.writerow(row)
        if _has_tensorboard():
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output / "tensorboard"), purge_step=len(keep) + 1 if keep else None)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.csv.writerow(row)
        self.csv_file.flush()
        if self.writer is not None:
            for key in ("loss", "lr", "temperature", "examples_per_s"):
                self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def write_eval(self, step: int, scores: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            for key, value in scores.items():
                self.writer.add_scalar(f"eval/{key}", value, step)
        with (self.output / "eval.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **scores}) + "\n")

    def close(self, *, plot: bool) -> None:
        if not self.enabled:
            return
        self.csv_file.close()
        if self.writer is not None:
            self.writer.close()
        if plot and self.rows:
            plot_metrics(self.rows, self.output / "loss.png")


def plot_metrics(rows: list[dict[str, Any]], path: Path) -> bool:
    """Loss and learning rate against the step; False when matplotlib is missing (``umr[eval]``)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [r["step"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    top.plot(steps, [r["loss"] for r in rows])
    top.set_ylabel("loss")
    bottom.plot(steps, [r["lr"] for r in rows], color="tab:orange")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def train(config: TrainConfig) -> Path:
    """Fine-tune ``config.model`` on ``config.data``; returns the output folder (``umr.load_model`` loads it)."""
    return Trainer(config).run()
