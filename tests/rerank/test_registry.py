"""Short reranker names, folder detection and the one loader."""

from __future__ import annotations

import json

import pytest

from umr.cli import main
from umr.models.registry import ModelNotAvailable
from umr.rerank import RERANKERS, load_reranker
from umr.rerank.registry import detect_family


def test_short_names_and_umr_models(capsys):
    assert RERANKERS["qwen3-vl-reranker-2b"].source == "Qwen/Qwen3-VL-Reranker-2B"
    assert RERANKERS["qwen3-vl-reranker-8b"].source == "Qwen/Qwen3-VL-Reranker-8B"
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "qwen3-vl-reranker-2b" in out and "gme-2b" in out


def test_missing_weights_give_the_one_line_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelNotAvailable, match="pass its folder instead"):
        load_reranker("qwen3-vl-reranker-2b")
    with pytest.raises(ModelNotAvailable, match="no such folder"):
        load_reranker(str(tmp_path / "nowhere"))


def test_family_detection(tmp_path, tiny_reranker_dir, tiny_qwen2vl_dir):
    assert detect_family(tiny_reranker_dir) == "qwen3-vl-reranker"
    assert detect_family(tiny_qwen2vl_dir) == "zero-shot"
    folder = tmp_path / "some-bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"]}))
    assert detect_family(folder) == "cross-encoder"
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    with pytest.raises(ModelNotAvailable, match="neither a cross-encoder nor a generative model"):
        detect_family(folder)
    with pytest.raises(ValueError, match="unknown reranker family"):
        load_reranker(tiny_reranker_dir, family="nope")
