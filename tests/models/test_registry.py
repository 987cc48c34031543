import json

import pytest

import umr
from umr.cli import main
from umr.models.registry import ModelNotAvailable, detect_family


def test_short_names_are_listed(capsys):
    names = {spec.name for spec in umr.list_models()}
    assert {"gme-2b", "gme-7b", "minilm"} <= names
    assert main(["models"]) == 0
    assert "gme-2b" in capsys.readouterr().out


def test_unreachable_hub_model_gives_one_line_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotAvailable, match="pass its folder instead"):
        umr.load_model("gme-2b")
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "x"}\n')
    assert main(["embed", "--model", "gme-2b", "--input", str(items), "--output", str(tmp_path / "o.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct" in err and "Traceback" not in err


def test_missing_folder_and_unknown_model_type(tmp_path):
    with pytest.raises(ModelNotAvailable, match="no such folder"):
        umr.load_model(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert-of-theseus"}))
    with pytest.raises(ModelNotAvailable, match="'bert-of-theseus' is not one umr can embed"):
        detect_family(tmp_path)
