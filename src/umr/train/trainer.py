"""The training loop: ``train(config) -> output folder``.

One optimizer step = ``grad_accum`` micro-batches; a micro-batch is ``batch_size`` examples
on each process (their union, the global micro-batch, shares one softmax). The family's own
modules stay in eval mode (their dropout off): the training forward is exactly the embedding
forward. LoRA's dropout (``lora_dropout``) is the one dropout on, during training steps only,
with GradCache replaying each chunk's random state so both passes draw the same masks.

The parts, each in its module: what a step reads (:mod:`.batches`: micro-batches, hard
negatives, prefetched items, bad examples), its backward pass (:mod:`.grad_cache`, the one
embedding path), the loss and its distributed gather (:mod:`.loss`, :mod:`.collectives`), the
precision (:mod:`.precision`), the update's schedule and finite checks (:mod:`.update`),
checkpoints and exact resume (:mod:`.checkpoint`), the logs (:mod:`.metrics`) and the output
folder (:mod:`.output`, :mod:`.lora` for adapters).

Distributed runs (``accelerate launch --multi_gpu`` or ``torchrun``: the ``WORLD_SIZE`` /
``RANK`` / ``LOCAL_RANK`` environment) join a process group (gloo on CPU, nccl on GPU); each
process takes its slice of every global micro-batch, and gradients are averaged in buckets
while the last backward pass runs (:class:`~umr.train.collectives.GradientReducer`; the model
is not wrapped in DDP: families call their own sub-modules, which a DDP wrapper would not see).
Every process evaluates; rank 0 writes, the others wait at a barrier with no short timeout.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..core.atomic import write_text_atomic
from ..core.devices import check_device
from ..data.beir import load_beir
from ..data.mbeir import load_mbeir
from ..eval.runner import evaluate
from ..models.base import Embedder, Trainable
from ..models.identity import files_fingerprint
from ..models.registry import load_model, model_folder, quiet_transformers
from . import checkpoint, collectives, lora, update
from .batches import MicroBatchFeed, Position
from .collectives import GradientReducer, world
from .config import TrainConfig
from .data import BatchPlan, TrainingData
from .errors import NonFiniteError, TrainingError
from .grad_cache import backward_step
from .loss import Temperature, distributed_info_nce
from .metrics import MetricsLog, has_tensorboard
from .output import copy_model_files, unique_errors, write_errors
from .precision import autocast_context, load_options, precision_record, step_dtype
from .provenance import source_fingerprint

__all__ = ["NonFiniteError", "Trainer", "TrainingError", "load_options", "train"]


class Trainer:
    """Holds a run's state; :func:`train` is the entry point."""

    def __init__(self, config: TrainConfig):
        self.config = config
        check_device(config.device)  # one clear line for cuda on a CPU-only machine, before any CUDA call
        self.device = collectives.join(config.device)
        self.rank, self.world_size = world()
        self.output = Path(config.output)
        # first: a bad path or setting fails before a large model loads
        self.temperature = Temperature(config.temperature, learn=config.learn_temperature,
                                       minimum=config.min_temperature).to(self.device)
        self.data = TrainingData(config.data)  # counting only: examples are checked when drawn
        torch.manual_seed(config.seed)
        self.base_folder = model_folder(config.model)
        self.embedder: Embedder = load_model(config.model, device=str(self.device), **load_options(config))
        if not isinstance(self.embedder, Trainable):
            raise TrainingError(f"{type(self.embedder).__name__} cannot be fine-tuned (no training contract)")
        self.data.check = self.embedder.check
        plan = BatchPlan(self.data.sizes, self.data.weights, global_batch=config.batch_size * self.world_size,
                         seed=config.seed, batching=config.batching, keep_short=self.world_size == 1)
        self.feed = MicroBatchFeed(self.data, plan, self.embedder, device=self.device,
                                   hard_negatives=config.hard_negatives, seed=config.seed, rank=self.rank,
                                   world_size=self.world_size)
        if self.feed.micro_per_epoch == 0:
            raise TrainingError(f"fewer examples than one global batch ({config.batch_size} x {self.world_size} "
                                f"processes): lower --batch-size")
        self.module = self.embedder.trainable_module()
        self.module.eval()
        self.lora_config = None
        if not config.full:
            targets = config.lora_targets if config.lora_targets is not None else self.embedder.lora_targets
            self.lora_config = lora.add_lora(self.module, r=config.lora_r, alpha=config.lora_alpha,
                                             targets=targets, dropout=config.lora_dropout)
            lora.set_dropout(self.module, False)  # on during training steps only (step_mode)
        self.train_modules = (list(config.train_modules) if config.train_modules is not None
                              else list(self.embedder.train_modules))
        self.trainable_count = lora.select_trainable(self.module, full=config.full, train_modules=self.train_modules)
        if config.grad_checkpointing:
            self.embedder.enable_gradient_checkpointing()
        self.trainable_names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        lora.keep_float32(self.params)
        self.autocast_dtype = step_dtype(self.module, bf16=config.bf16, announce=self.rank == 0)
        optimised = self.params + ([self.temperature.log_inverse] if config.learn_temperature else [])
        self.optimizer = torch.optim.AdamW(optimised, lr=config.lr, weight_decay=config.weight_decay)
        self.reducer = GradientReducer(optimised)

        per_epoch = max(1, self.feed.micro_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        self.warmup_steps = update.warmup_steps(config.warmup, self.total_steps)
        self.scheduler = update.scheduler(self.optimizer, total=self.total_steps, warmup=self.warmup_steps,
                                          kind=config.schedule)
        self.step = 0
        self.metrics: list[dict[str, Any]] = []
        #: steps skipped for a non-finite loss or gradient, and those that held τ at its bound
        self.skipped_steps: list[int] = []
        self.bound_steps: list[int] = []

    @property
    def position(self) -> Position:
        """Where the data stream is (saved in checkpoints)."""
        return self.feed.position

    @property
    def precision(self) -> dict[str, Any]:
        """The dtypes the run computes in (recorded in training.json)."""
        return precision_record(self.module, self.autocast_dtype)

    # -- one optimizer step -------------------------------------------------------------------------

    def loss_fn(self, vectors: torch.Tensor, *, counts: tuple[int, int, int], examples: list[int]):
        return distributed_info_nce(vectors, counts, examples=examples, temperature=self.temperature(),
                                    false_negative_margin=self.config.false_negative_margin)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's bf16 autocast, if any (trainable float32 modules meet bf16 activations)."""
        return autocast_context(self.device, self.autocast_dtype)

    @contextlib.contextmanager
    def step_mode(self):
        """What a training step runs under: LoRA's dropout on, the autocast (once, around every
        forward and backward of the step)."""
        if self.lora_config is not None:
            lora.set_dropout(self.module, True)
        try:
            with self.autocast():
                yield
        finally:
            if self.lora_config is not None:
                lora.set_dropout(self.module, False)

    def accumulate_gradients(self) -> torch.Tensor:
        """Backward of the step's micro-batches, gradients averaged over processes; returns the
        step's loss (a tensor on the device: reading it waits for the device)."""
        config = self.config
        total = torch.zeros((), device=self.device)
        with self.step_mode():
            for m in range(config.grad_accum):
                batch, prepared = self.feed.next()
                loss_fn = functools.partial(self.loss_fn, counts=batch.counts, examples=batch.examples)
                total = total + backward_step(
                    self.embedder.training_forward_prepared, prepared, loss_fn, device=self.device,
                    chunk=config.grad_cache_chunk, scale=1.0 / config.grad_accum,
                    before_last_backward=self.reducer.arm if m == config.grad_accum - 1 else None)
        self.reducer.finish()
        return total / config.grad_accum

    def apply_update(self, loss: torch.Tensor) -> float:
        """Check the step, clip, update; returns the loss value. A non-finite loss or gradient
        stops the run (:class:`NonFiniteError`) or skips the update (``on_nonfinite="skip"``)."""
        config = self.config
        step = self.step + 1
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        value, bad = update.read_step(loss, norm, self.temperature.log_inverse.grad if config.learn_temperature
                                      else None)
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            if config.on_nonfinite != "skip":
                raise NonFiniteError(
                    f"step {step}: {', '.join(bad)}; stopped before updating the weights with it (the last "
                    f"checkpoint in {self.output / 'checkpoints'} is intact). Lower --lr, check the data, or pass "
                    f"--on-nonfinite skip to skip such steps")
            self.skipped_steps.append(step)
            if self.rank == 0:
                print(f"umr train: step {step} skipped ({', '.join(bad)}); {len(self.skipped_steps)} step(s) "
                      f"skipped so far", file=sys.stderr)
        else:
            if config.max_grad_norm:
                torch.nn.utils.clip_grads_with_norm_(self.params, config.max_grad_norm, norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if config.learn_temperature and self.temperature.keep_in_bounds():
                if not self.bound_steps and self.rank == 0:
                    print(f"umr train: the learned temperature reached its lower bound {config.min_temperature} "
                          f"at step {step}; it is held there (min_temperature)", file=sys.stderr)
                self.bound_steps.append(step)
        self.scheduler.step()
        self.step = step
        return value

    def train_step(self) -> float:
        return self.apply_update(self.accumulate_gradients())

    # -- checkpoints ---------------------------------------------------------------------------------

    def check_weights(self) -> None:
        update.check_weights(self.trainable_names, self.params, step=self.step)

    def save_checkpoint(self) -> None:
        self.check_weights()  # on every process: the same weights, the same verdict
        bad_examples = self.gather_bad_examples()
        if self.rank == 0:
            checkpoint.save(self.output / "checkpoints", self.step, {
                "step": self.step, "epoch": self.position.epoch, "index": self.position.index,
                "trainable": checkpoint.trainable_state(self.module), "temperature": self.temperature.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": checkpoint.rng_state(self.device), "metrics": self.metrics,
                "skipped_steps": self.skipped_steps, "bound_steps": self.bound_steps,
                "bad_examples": bad_examples,
                "config": self.config.to_dict(),
            }, keep=self.config.keep_checkpoints)
        collectives.wait_for_all()

    def gather_bad_examples(self) -> list[list[dict[str, Any]]]:
        """Every process's bad examples (:meth:`~umr.train.data.TrainingData.error_state`), in
        rank order: each process draws its own share, so each finds its own (a collective)."""
        return collectives.all_gather_object(self.data.error_state())

    def restore(self) -> bool:
        state = checkpoint.load_latest(self.output / "checkpoints")
        if state is None:
            return False
        checkpoint.check_resumable(state, self.config.to_dict(), self.output)
        checkpoint.load_trainable(self.module, state["trainable"], self.output)
        self.temperature.load_state_dict(state["temperature"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"], self.device)
        self.step = int(state["step"])
        self.feed.position = Position(int(state["epoch"]), int(state["index"]))
        self.metrics = list(state["metrics"])
        self.skipped_steps = list(state.get("skipped_steps", []))
        self.bound_steps = list(state.get("bound_steps", []))
        found = state["bad_examples"]  # each process's own; all of them when resumed on another number
        self.data.restore_errors(found[self.rank] if len(found) == self.world_size else [e for f in found for e in f])
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
        try:
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
        finally:
            bar.close()
            self.feed.close()
            self.reducer.close()
        self.save_checkpoint()
        final_eval = self.evaluate() if config.eval_data else None
        if final_eval is not None:
            logger.write_eval(self.step, final_eval)
        bad_examples = self.gather_bad_examples()
        if self.rank == 0:
            self.save_model(final_eval, bad_examples)
            logger.close(plot=True)
        collectives.wait_for_all()
        return self.output

    def evaluate(self) -> dict[str, float]:
        """Headline metrics of the current model on ``eval_data``. Every process evaluates (the
        same model, the same numbers), so none waits in a collective past NCCL's timeout."""
        data = self.config.eval_data
        tasks = load_mbeir(data) if self.config.eval_benchmark == "mbeir" else load_beir(data)
        with self.autocast():
            results = evaluate(self.embedder, tasks)
        return {f"{r['task']}/{k}": v for r in results["tasks"] for k, v in r["metrics"].items()
                if isinstance(v, (int, float))}

    def save_model(self, final_eval: dict[str, float] | None, bad_examples: list[list[dict[str, Any]]]) -> None:
        """The trained model (LoRA merged) in ``output``, loadable by ``umr.load_model``; with
        ``save_adapter``, the LoRA adapter (and trained modules) as peft's files in ``output/adapter``;
        every process's ``bad_examples`` (:meth:`gather_bad_examples`) in ``errors.jsonl``, each once."""
        errors = unique_errors(bad_examples)
        self.check_weights()
        adapter_base = None
        if self.lora_config is not None and self.config.save_adapter:
            adapter_base = lora.save_adapter(self.module, self.lora_config, self.output / "adapter",
                                             base_model=str(self.base_folder), train_modules=self.train_modules)
        if self.lora_config is not None:
            lora.merge(self.module)
        copy_model_files(self.base_folder, self.output)
        with quiet_transformers():
            self.embedder.save_pretrained(self.output)
        record = {
            "base_model": {"name": self.config.model, "folder": str(self.base_folder),
                           "fingerprint": files_fingerprint(self.base_folder)},
            "data": [{"path": s.path, "name": s.label, "weight": s.weight, "instruction": s.instruction,
                      "tasks": s.tasks, "fingerprint": source_fingerprint(Path(s.path))} for s in self.config.data],
            "examples": len(self.data), "skipped_examples": len(errors),
            "config": self.config.to_dict(), "processes": self.world_size,
            "trainable_parameters": self.trainable_count, "precision": self.precision,
            "steps": self.step, "epochs_seen": self.position.epoch + 1,
            "skipped_steps": self.skipped_steps,
            "final_loss": self.metrics[-1]["loss"] if self.metrics else None,
            "final_temperature": self.temperature.value,
            "temperature_at_bound_steps": len(self.bound_steps),
            "final_eval": final_eval,
            "adapter": None if adapter_base is None else {"folder": "adapter", "base_module": adapter_base or "."},
            "tensorboard": "tensorboard/" if has_tensorboard() else "not installed (pip install tensorboard)",
        }
        write_text_atomic(self.output / "training.json", json.dumps(record, indent=2, default=str))
        write_errors(self.output / "errors.jsonl", errors)


def train(config: TrainConfig) -> Path:
    """Fine-tune ``config.model`` on ``config.data``; returns the output folder (``umr.load_model`` loads it)."""
    return Trainer(config).run()
