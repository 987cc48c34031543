"""Collectives hold to NCCL's rule on any machine: every tensor a collective receives lives on
the process's device. A fake world of two processes on ``meta`` tensors (values are not needed
to check devices) runs the real training step: a tensor made without ``device=`` (a CPU
``torch.zeros`` for an empty group, a temperature left on the CPU) fails here as under NCCL."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from umr.train import TrainConfig
from umr.train.collectives import DeviceMismatch, all_reduce, simulated
from umr.train.loss import gather_groups
from umr.train.trainer import Trainer

import toy
from train_fixtures import text_examples


class _Done:
    def wait(self) -> None:
        return None


class FakeWorld:
    """Rank 0 of two processes whose peer holds the same rows; counts every collective."""

    def __init__(self, size: int = 2):
        self.size = size
        self.calls: Counter = Counter()

    def world(self) -> tuple[int, int]:
        return 0, self.size

    def all_gather(self, outputs, tensor) -> None:
        self.calls["all_gather"] += 1
        for out in outputs:
            out.copy_(tensor)

    def all_gather_object(self, value):
        self.calls["all_gather_object"] += 1
        return [value] * self.size

    def all_reduce(self, tensor):
        self.calls["all_reduce"] += 1
        return _Done()

    def wait_for_all(self) -> None:
        self.calls["wait_for_all"] += 1


def test_a_tensor_off_the_process_device_is_refused():
    with simulated(FakeWorld(), "meta"):
        with pytest.raises(DeviceMismatch, match="all_gather: a tensor on cpu entered a collective of a process on meta"):
            gather_groups(torch.zeros(3, 4), [1, 1, 1], [0])
        with pytest.raises(DeviceMismatch, match="all_reduce"):
            all_reduce(torch.zeros(2))
        groups, examples = gather_groups(torch.zeros(3, 4, device="meta"), [1, 1, 1], [5])
    assert [g.shape for g in groups] == [(2, 4)] * 3 and examples == [5, 5]


@pytest.fixture
def toy_model(tmp_path):
    toy.install(tmp_path / "toy-model")
    (tmp_path / "toy-model").mkdir()
    return "toy-train"


@pytest.mark.parametrize("chunk", [None, 3])
def test_a_training_step_hands_collectives_only_device_tensors(toy_model, tmp_path, chunk):
    data = text_examples(tmp_path / "train.jsonl", negatives=0)  # --hard-negatives 0: an empty group
    world = FakeWorld()
    with simulated(world, "meta"):
        trainer = Trainer(TrainConfig(model=toy_model, data=[str(data)], output=str(tmp_path / "out"), device="meta",
                                      batch_size=2, grad_accum=2, learn_temperature=True, false_negative_margin=0.1,
                                      grad_cache_chunk=chunk, progress=False))
        loss = trainer.accumulate_gradients()
    assert loss.device.type == "meta" and trainer.temperature.log_inverse.device.type == "meta"
    assert world.calls["all_gather"] == 2 and world.calls["all_reduce"] >= 1
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in trainer.params)
    assert trainer.temperature.log_inverse.grad is not None
