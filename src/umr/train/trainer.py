"""The training loop: ``train(config) -> output folder``.

One optimizer step = ``grad_accum`` micro-batches; a micro-batch is ``batch_size`` examples
on each process (their union, the global micro-batch, shares one softmax). The family's own
modules stay in eval mode (their dropout off): the training forward is exactly the embedding
forward. LoRA's dropout (``lora_dropout``) is the one dropout on, during training steps only,
with GradCache replaying each chunk's random state so both passes draw the same masks.

Examples are read and checked when a micro-batch draws them (:class:`~umr.train.data.TrainingData`:
start-up only counts them); their items are prepared (decoded, resized, tokenised) by the family's
prefetching loader ahead of the micro-batch that needs them, once: GradCache's second pass reuses
them. A bad example, found when drawn (its place goes to another) or when one of its items fails
to prepare (it is left out of that micro-batch), is reported once with its file, line and reason,
never drawn again, listed in ``errors.jsonl`` and kept in checkpoints, so a resumed run skips it too.

Precision: trainable weights and the optimizer state are float32 always. Under ``bf16`` the
frozen weights load in bfloat16 (LoRA runs; full fine-tuning keeps float32 weights) and the
whole step runs under one bf16 autocast; frozen weights that are bfloat16 anyway (``dtype`` in
``model_options``, MM-Embed on a GPU) turn that autocast on; float16 weights are refused.

Numerics: a step whose loss or gradient is not finite stops the run with the step named
(``on_nonfinite="stop"``) or is skipped with a counted warning (``"skip"``); a learned
temperature is held at ``min_temperature`` and the first step that reaches it is reported.

Distributed runs (``accelerate launch --multi_gpu`` or ``torchrun``: the ``WORLD_SIZE`` /
``RANK`` / ``LOCAL_RANK`` environment) join a process group (gloo on CPU, nccl on GPU); each
process takes its slice of every global micro-batch, and gradients are averaged in buckets
while the last backward pass runs (:class:`~umr.train.collectives.GradientReducer`; the model
is not wrapped in DDP: families call their own sub-modules, which a DDP wrapper would not see).
Every process evaluates; rank 0 writes, the others wait at a barrier with no short timeout.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.atomic import write_text_atomic
from ..core.devices import check_device
from ..core.items import Item, ItemError
from ..data.beir import load_beir
from ..data.mbeir import load_mbeir
from ..eval.runner import evaluate
from ..models.base import Embedder, Trainable
from ..models.identity import files_fingerprint
from ..models.prefetch import Prefetching, PrefetchingLoader, resolved_workers
from ..models.registry import load_model, model_folder, quiet_transformers
from . import checkpoint, collectives, lora
from .collectives import GradientReducer, world
from .config import TrainConfig
from .data import BatchPlan, Example, TrainingData, example_error, sample_negatives
from .grad_cache import backward_step
from .loss import Temperature, distributed_info_nce
from .provenance import source_fingerprint

#: files of a base model folder that are not copied into the output (the trained weights replace them)
_WEIGHTS = (".safetensors", ".bin", ".pth", ".pt", ".safetensors.index.json", ".bin.index.json")
#: what a umr training run writes; not copied when continuing from a trained model
RUN_FILES = {"checkpoints", "tensorboard", "training.json", "metrics.csv", "loss.png", "errors.jsonl", "adapter"}


#: settings a resumed run may change (how long, how often to save or log, where to run)
RESUMABLE_CHANGES = {"resume", "max_steps", "epochs", "progress", "save_every", "keep_checkpoints", "log_every",
                     "save_adapter", "device", "eval_data", "eval_every", "eval_benchmark", "on_nonfinite"}


class TrainingError(RuntimeError):
    """A run that cannot start or continue (no usable examples, a family that cannot train, ...)."""


class NonFiniteError(TrainingError):
    """A step's loss or gradient was not finite (``on_nonfinite="stop"``)."""


@dataclass
class Position:
    """Where the data stream is: micro-batch ``index`` of ``epoch``."""

    epoch: int = 0
    index: int = 0


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


def load_options(config: TrainConfig) -> dict[str, Any]:
    """What the base model is loaded with: ``model_options``, and under ``bf16`` (LoRA or
    trained modules, not full fine-tuning) bfloat16 frozen weights unless a dtype is given."""
    options = dict(config.model_options)
    if config.bf16 and not config.full:
        options.setdefault("dtype", "bfloat16")
    return options


@dataclass
class MicroBatch:
    """This process's share of a global micro-batch: its examples (indices into the training
    data, and the examples drawn) and their items as one list, queries, then positives, then each
    example's hard negatives (tevatron's layout: one forward, split by :attr:`counts`).
    ``positions`` number the items for the prefetching loader."""

    examples: list[int]
    drawn: list[Example]
    negatives: list[list[Item]]
    items: list[Item]
    positions: list[int] = field(default_factory=list)

    @property
    def counts(self) -> tuple[int, int, int]:
        n = len(self.examples)
        return n, n, len(self.items) - 2 * n

    def example_of(self, k: int) -> int:
        """Which of :attr:`examples` item ``k`` belongs to."""
        n = len(self.examples)
        if k < 2 * n:
            return k % n
        k -= 2 * n
        for j, negatives in enumerate(self.negatives):
            if k < len(negatives):
                return j
            k -= len(negatives)
        raise IndexError(k)

    def without(self, j: int) -> "MicroBatch":
        """The batch with example ``j`` (all its items) left out."""
        keep = [k for k in range(len(self.items)) if self.example_of(k) != j]
        return replace(self, examples=self.examples[:j] + self.examples[j + 1:],
                       drawn=self.drawn[:j] + self.drawn[j + 1:], negatives=self.negatives[:j] + self.negatives[j + 1:],
                       items=[self.items[k] for k in keep], positions=[self.positions[k] for k in keep])


class EpochStream:
    """This process's micro-batches of one epoch from micro-batch ``start`` on, made when first
    asked for: a lazy sequence of the micro-batches' item positions, with :attr:`items` by
    position, as :class:`~umr.models.prefetch.PrefetchingLoader` reads them (it asks a few
    micro-batches ahead of the one running)."""

    def __init__(self, make: Callable[[int], MicroBatch], *, start: int, stop: int):
        self._make, self.start, self.stop = make, start, stop
        self.items: dict[int, Item] = {}
        self._batches: dict[int, MicroBatch] = {}
        self._next_position = 0

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int) -> list[int]:
        return self.micro_batch(self.start + k).positions

    def micro_batch(self, index: int) -> MicroBatch:
        """Micro-batch ``index`` of the epoch, its items numbered."""
        if index not in self._batches:
            batch = self._make(index)
            batch.positions = list(range(self._next_position, self._next_position + len(batch.items)))
            self._next_position += len(batch.items)
            self.items.update(zip(batch.positions, batch.items))
            self._batches[index] = batch
        return self._batches[index]

    def forget(self, index: int) -> None:
        for position in self._batches.pop(index).positions:
            self.items.pop(position, None)


@dataclass
class _Epoch:
    number: int
    stream: EpochStream
    loader: PrefetchingLoader | None


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
            lora.set_dropout(self.module, False)  # on during training steps only (step_mode)
        self.train_modules = (list(config.train_modules) if config.train_modules is not None
                              else list(self.embedder.train_modules))
        self.trainable_count = lora.select_trainable(self.module, full=config.full, train_modules=self.train_modules)
        if config.grad_checkpointing:
            self.embedder.enable_gradient_checkpointing()
        self.trainable_names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        lora.keep_float32(self.params)
        self.autocast_dtype = self._autocast_dtype()
        optimised = self.params + ([self.temperature.log_inverse] if config.learn_temperature else [])
        self.optimizer = torch.optim.AdamW(optimised, lr=config.lr, weight_decay=config.weight_decay)
        self.reducer = GradientReducer(optimised)

        per_epoch = max(1, self.micro_per_epoch // config.grad_accum)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        warmup = config.warmup
        self.warmup_steps = int(round(warmup * self.total_steps)) if 0 < warmup < 1 else int(warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule_factor(
            s, total=self.total_steps, warmup=self.warmup_steps, kind=config.schedule))
        self.step = 0
        self.position = Position()
        self.metrics: list[dict[str, Any]] = []
        #: steps skipped for a non-finite loss or gradient, and those that held τ at its bound
        self.skipped_steps: list[int] = []
        self.bound_steps: list[int] = []
        self._epoch: _Epoch | None = None

    def _autocast_dtype(self) -> torch.dtype | None:
        """bfloat16 under ``bf16`` or when frozen weights are bfloat16 anyway; refuses float16."""
        frozen = {p.dtype for p in self.module.parameters() if not p.requires_grad and p.is_floating_point()}
        if torch.float16 in frozen:
            raise TrainingError("the model's weights are float16, which trains unstably without loss scaling: "
                                "load it in bfloat16 (--bf16) or float32 (--dtype float32)")
        if not self.config.bf16 and torch.bfloat16 in frozen:
            if self.rank == 0:
                print("umr train: the frozen weights are bfloat16: the step runs under bf16 autocast (as with "
                      "--bf16); trainable weights and the optimizer state stay float32", file=sys.stderr)
            return torch.bfloat16
        return torch.bfloat16 if self.config.bf16 else None

    @property
    def precision(self) -> dict[str, Any]:
        """The dtypes the run computes in (recorded in training.json)."""
        frozen = sorted({str(p.dtype).removeprefix("torch.") for p in self.module.parameters()
                         if not p.requires_grad and p.is_floating_point()})
        return {"frozen_weights": frozen, "trainable_weights": "float32",
                "autocast": str(self.autocast_dtype).removeprefix("torch.") if self.autocast_dtype else None}

    # -- data ------------------------------------------------------------------------------------

    def _micro_batch(self, plan: list[list[int]], epoch: int, index: int) -> MicroBatch:
        """This process's examples of global micro-batch ``index`` of ``epoch``, and their items."""
        drawn = self.data.draw(plan[index], rank=self.rank, world=self.world_size)
        chosen = [e for _, e in drawn]
        negatives = [sample_negatives(e, self.config.hard_negatives, seed=self.config.seed, epoch=epoch, index=i)
                     for i, e in drawn]
        items = [e.query for e in chosen] + [e.positive for e in chosen] + [n for group in negatives for n in group]
        return MicroBatch(examples=[i for i, _ in drawn], drawn=chosen, negatives=negatives, items=items)

    def _prepare(self, item: Item) -> Any:
        self.embedder.check(item)
        return self.embedder.prepare_training_item(item)

    def _open_epoch(self, epoch: int, start: int) -> _Epoch:
        if self._epoch is not None and self._epoch.loader is not None:
            self._epoch.loader.close()
        plan = self.plan.epoch(epoch)
        stream = EpochStream(functools.partial(self._micro_batch, plan, epoch), start=start, stop=len(plan))
        workers = 0
        if isinstance(self.embedder, Prefetching):
            workers = resolved_workers(self.embedder.prefetch_workers)
            if self.device.type == "cuda":  # the CPU idles while the accelerator runs the forward
                workers = max(1, workers)
        loader = (PrefetchingLoader(stream.items, stream, self._prepare, workers=workers,
                                    ahead=self.embedder.prefetch_ahead) if workers else None)
        return _Epoch(epoch, stream, loader)

    def next_micro_batch(self) -> tuple[MicroBatch, list[Any]]:
        """This process's next micro-batch and its prepared items (examples with an item that
        cannot be prepared left out and rejected; a micro-batch left empty is passed over)."""
        while True:
            if self.position.index >= self.micro_per_epoch:
                self.position = Position(self.position.epoch + 1, 0)
            if self._epoch is None or self._epoch.number != self.position.epoch:
                self._epoch = self._open_epoch(self.position.epoch, self.position.index)
            index = self.position.index
            self.position.index += 1
            batch = self._epoch.stream.micro_batch(index)
            batch, prepared = self._take(batch)
            if self._epoch.loader is not None:
                self._epoch.loader.release(self._epoch.stream.micro_batch(index).positions)
            self._epoch.stream.forget(index)
            if batch.examples:
                return batch, prepared

    def _take(self, batch: MicroBatch) -> tuple[MicroBatch, list[Any]]:
        loader = self._epoch.loader
        while batch.examples:
            try:
                return batch, (loader.take(batch.positions) if loader is not None
                               else Embedder._each_item(batch.items, self._prepare))
            except ItemError as exc:
                j = batch.example_of(exc.index or 0)
                self.data.reject(batch.examples[j], example_error(batch.drawn[j], exc))  # out of later draws too
                batch = batch.without(j)
        return batch, []

    # -- one optimizer step -------------------------------------------------------------------------

    def loss_fn(self, vectors: torch.Tensor, *, counts: tuple[int, int, int], examples: list[int]):
        return distributed_info_nce(vectors, counts, examples=examples, temperature=self.temperature(),
                                    false_negative_margin=self.config.false_negative_margin)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The run's bf16 autocast, if any (trainable float32 modules meet bf16 activations)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

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
                batch, prepared = self.next_micro_batch()
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
        checks = [loss.float(), norm.float().to(self.device)]
        if config.learn_temperature and self.temperature.log_inverse.grad is not None:
            checks.append(self.temperature.log_inverse.grad.float())
        value, norm_value, *temperature_grad = torch.stack(checks).tolist()  # the step's one wait
        bad = [f"{what} is {number}" for what, number in
               (("the loss", value), ("the gradient norm", norm_value),
                ("the temperature's gradient", temperature_grad[0] if temperature_grad else 0.0))
               if not math.isfinite(number)]
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

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in self.module.named_parameters() if p.requires_grad}

    def check_weights(self) -> None:
        """Refuse to write weights that are not finite (whatever made them so)."""
        bad = [name for name, p in zip(self.trainable_names, self.params) if not bool(torch.isfinite(p).all())]
        if bad:
            raise NonFiniteError(f"after step {self.step}, {len(bad)} trainable tensor(s) are not finite "
                                 f"(first: {bad[0]}); nothing was written. Lower --lr or check the data")

    def save_checkpoint(self) -> None:
        self.check_weights()  # on every process: the same weights, the same verdict
        bad_examples = self.gather_bad_examples()
        if self.rank == 0:
            checkpoint.save(self.output / "checkpoints", self.step, {
                "step": self.step, "epoch": self.position.epoch, "index": self.position.index,
                "trainable": self.trainable_state(), "temperature": self.temperature.state_dict(),
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
        checkpoint.set_rng_state(state["rng"], self.device)
        self.step = int(state["step"])
        self.position = Position(int(state["epoch"]), int(state["index"]))
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
            if self._epoch is not None and self._epoch.loader is not None:
                self._epoch.loader.close()
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
        errors: dict[int, dict[str, Any]] = {}
        for found in bad_examples:
            for entry in found:
                errors.setdefault(entry["index"], {k: v for k, v in entry.items() if k != "index"})
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
            "tensorboard": "tensorboard/" if _has_tensorboard() else "not installed (pip install tensorboard)",
        }
        write_text_atomic(self.output / "training.json", json.dumps(record, indent=2, default=str))
        if errors:
            with (self.output / "errors.jsonl").open("w", encoding="utf-8") as handle:
                for error in errors.values():
                    handle.write(json.dumps(error) + "\n")


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
