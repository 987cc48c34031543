"""Default dtypes on a CPU (umr.models.cpu): bfloat16 only for a family whose bf16 vectors stay
close to float32 and only where the CPU multiplies bf16 natively; the dtype is part of the identity."""

from __future__ import annotations

import pytest
import torch

import umr
from umr.models import cpu


def test_cpu_default_dtype_needs_both_closeness_and_native_bf16(monkeypatch):
    monkeypatch.setattr(cpu, "native_bf16_matmul", lambda: True)
    assert cpu.cpu_default_dtype(bf16_close=True) == torch.bfloat16
    assert cpu.cpu_default_dtype(bf16_close=False) == torch.float32
    monkeypatch.setattr(cpu, "native_bf16_matmul", lambda: False)
    assert cpu.cpu_default_dtype(bf16_close=True) == torch.float32


@pytest.fixture(scope="module")
def tiny_qwen3vl_dir(tmp_path_factory):
    from umr.models.qwen3vl import write_tiny_qwen3vl

    return write_tiny_qwen3vl(tmp_path_factory.mktemp("q3") / "tiny-qwen3vl", seed=0)


def test_default_dtype_follows_the_cpu_and_enters_the_identity(monkeypatch, tiny_qwen3vl_dir, tiny_gme_dir):
    monkeypatch.setattr(cpu, "native_bf16_matmul", lambda: True)
    q3 = umr.load_model(tiny_qwen3vl_dir)  # close in bf16: bf16 by default on such a CPU
    assert q3.dtype == torch.bfloat16 and q3.identity.options["dtype"] == "bfloat16"
    assert umr.load_model(tiny_gme_dir).dtype == torch.float32  # not close enough: float32 stays
    monkeypatch.setattr(cpu, "native_bf16_matmul", lambda: False)
    plain = umr.load_model(tiny_qwen3vl_dir)
    assert plain.dtype == torch.float32 and plain.identity.key() != q3.identity.key()
