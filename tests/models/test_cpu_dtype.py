"""Default dtypes on a CPU (umr.core.devices): bfloat16 only for a family whose bf16 vectors stay
close to float32, and only where the switch UMR_CPU_BF16 (auto: the CPU's native bf16) says so;
a dtype that merely followed the machine's default is not part of the identity, a chosen one is.

The switch is set through the environment here, as users and CI set it: never by patching umr."""

from __future__ import annotations

import pytest
import torch

import umr
from umr.cli import main
from umr.models import cpu

pytestmark = pytest.mark.dtype_sensitive


def test_the_switch_decides_for_bf16_close_families_only(monkeypatch):
    monkeypatch.setenv("UMR_CPU_BF16", "1")
    assert cpu.cpu_default_dtype(bf16_close=True) == torch.bfloat16
    assert cpu.cpu_default_dtype(bf16_close=False) == torch.float32
    monkeypatch.setenv("UMR_CPU_BF16", "0")
    assert cpu.cpu_default_dtype(bf16_close=True) == torch.float32
    for auto in ("auto", "AUTO", " auto ", ""):  # unset or empty is auto: what this CPU multiplies natively
        monkeypatch.setenv("UMR_CPU_BF16", auto)
        assert cpu.bf16_by_default() is cpu.native_bf16_matmul()
    monkeypatch.delenv("UMR_CPU_BF16")
    assert cpu.cpu_bf16_setting() == "auto" and cpu.cpu_switch_environment() == {}
    monkeypatch.setenv("UMR_CPU_BF16", "0")
    assert cpu.cpu_switch_environment() == {"UMR_CPU_BF16": "0"}


@pytest.mark.parametrize("value", ["yes", "2", "bf16", "true"])
def test_a_bad_switch_value_is_one_line(monkeypatch, capsys, value):
    monkeypatch.setenv("UMR_CPU_BF16", value)
    with pytest.raises(cpu.CpuSwitchError, match=f"UMR_CPU_BF16='{value}' is not a setting: use auto"):
        umr.load_model("minilm")
    assert main(["models"]) == 2  # refused before any work, whatever the command
    err = capsys.readouterr().err
    assert err.startswith(f"umr models: error: UMR_CPU_BF16='{value}'") and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, expected", [("fpu sse avx2 fma", False), ("fpu avx512f avx512_bf16", True),
                                             ("fpu amx_tile amx_bf16", True)])
def test_native_bf16_detection_reads_the_cpu_flags(tmp_path, flags, expected):
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    assert cpu.lists_native_bf16(info) is expected


def test_default_dtype_follows_the_switch_and_only_a_chosen_dtype_enters_the_identity(
        monkeypatch, tiny_qwen3vl_dir, tiny_gme_dir):
    monkeypatch.setenv("UMR_CPU_BF16", "1")
    q3 = umr.load_model(tiny_qwen3vl_dir)  # close in bf16: bf16 by default under the switch
    assert q3.dtype == torch.bfloat16 and q3.identity.options["dtype"] == "bfloat16"
    assert q3.identity.dtype_follows_machine
    gme = umr.load_model(tiny_gme_dir)  # not close enough: float32 stays, and its dtype identifies it
    assert gme.dtype == torch.float32 and not gme.identity.dtype_follows_machine
    monkeypatch.setenv("UMR_CPU_BF16", "0")
    plain = umr.load_model(tiny_qwen3vl_dir)
    assert plain.dtype == torch.float32
    # the default on another machine is the same model: one key, nothing differs
    assert plain.identity.key() == q3.identity.key() and q3.identity.differences(plain.identity) == []
    # a dtype chosen on purpose is part of the identity (and keyed as float32 when it is float32)
    chosen = umr.load_model(tiny_qwen3vl_dir, dtype="bfloat16")
    assert not chosen.identity.dtype_follows_machine and chosen.identity.key() != plain.identity.key()
    exact = umr.load_model(tiny_qwen3vl_dir, dtype="float32")
    assert exact.identity.key() == plain.identity.key()
    assert chosen.identity.differences(exact.identity) == ["dtype: 'bfloat16' vs 'float32'"]
    # GME (not bf16-close) in bfloat16 is another model, chosen or not
    gme_bf16 = umr.load_model(tiny_gme_dir, dtype="bfloat16")
    assert "dtype: 'float32' vs 'bfloat16'" in gme.identity.differences(gme_bf16.identity)
