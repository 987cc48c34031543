"""Contrastive fine-tuning of any umr family as a bi-encoder (``umr train``).

Read top-down: :mod:`.collectives` (every collective, on the process's device; the bucketed
gradient reducer), :mod:`.loss` (InfoNCE, the masks, the distributed gather), :mod:`.grad_cache`
(one step's backward, whole or cached), :mod:`.data` (examples, sources, mixtures, batches),
:mod:`.batches` (a step's micro-batches: hard negatives, prefetched items, bad examples),
:mod:`.precision` (bf16, decided once), :mod:`.update` (the schedule, finite checks),
:mod:`.lora` (what trains, peft adapters), :mod:`.checkpoint` (exact resume), :mod:`.metrics`
and :mod:`.output` (what a run writes) and :mod:`.trainer` (the loop).
"""

from .config import TrainConfig
from .data import BatchPlan, Example, Source, read_examples_jsonl, read_mbeir_train
from .loss import info_nce
from .trainer import TrainingError, train

__all__ = ["BatchPlan", "Example", "Source", "TrainConfig", "TrainingError", "info_nce", "read_examples_jsonl",
           "read_mbeir_train", "train"]
