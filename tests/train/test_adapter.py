"""``--save-adapter`` writes peft's own adapter: ``PeftModel.from_pretrained(the base network,
OUTPUT/adapter)`` loads every saved tensor into a peft parameter and leaves none out, and the
adapted network embeds as the merged model does; trained modules are peft's ``modules_to_save``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import umr
from umr.models.registry import model_folder
from umr.train import TrainConfig, train

from train_fixtures import multimodal_examples, text_examples


def _assert_peft_holds_exactly(peft_model, adapter) -> None:
    from peft import get_peft_model_state_dict

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    loaded = get_peft_model_state_dict(peft_model)
    assert sorted(saved) == sorted(loaded)  # nothing missing, nothing unexpected
    assert all(torch.equal(saved[k], loaded[k].float()) for k in saved)


@pytest.mark.slow
def test_minilm_adapter_loads_in_peft_and_embeds_as_the_merged_model(tmp_path):
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    data = text_examples(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    train(TrainConfig(model="minilm", data=[str(data)], output=str(out), max_steps=2, batch_size=4, lr=1e-3,
                      save_adapter=True, progress=False))
    base = model_folder("minilm")
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(base)
    peft_model = PeftModel.from_pretrained(AutoModel.from_pretrained(str(base)), str(out / "adapter")).eval()
    _assert_peft_holds_exactly(peft_model, out / "adapter")

    texts = ["what do llamas eat", "The Eiffel Tower is 330 metres tall.", "a"]
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        states = peft_model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    peft_vectors = torch.nn.functional.normalize((states * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    merged = umr.load_model(out).encode_candidates(texts)
    assert np.abs(peft_vectors - merged).max() <= 1e-5
    before = umr.load_model("minilm").encode_candidates(texts)
    assert np.abs(before - merged).max() > 1e-3  # the adapter did change the model


@pytest.mark.slow
def test_mmembed_projector_is_saved_as_peft_modules_to_save(tmp_path):
    from peft import PeftModel

    from umr.testing import write_tiny_mmembed
    from umr.models.mmembed.modeling_mmembed import load_mmembed

    base = write_tiny_mmembed(tmp_path / "mm")
    data = multimodal_examples(tmp_path / "d" / "train.jsonl")
    out = tmp_path / "out"
    train(TrainConfig(model=str(base), data=[str(data)], output=str(out), max_steps=2, batch_size=4, lr=5e-3,
                      batching="mixed", save_adapter=True, progress=False))
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["multi_modal_projector"]
    peft_model = PeftModel.from_pretrained(load_mmembed(base), str(out / "adapter")).eval()
    _assert_peft_holds_exactly(peft_model, out / "adapter")

    adapted = umr.load_model(base)
    adapted.model = peft_model.base_model.model  # the MM-Embed network, peft's layers in it
    items = [umr.Item.query("a red square"), umr.Item.candidate(image=str(tmp_path / "d" / "images" / "red.png"))]
    merged = umr.load_model(out).embed(items).vectors
    assert np.abs(adapted.embed(items).vectors - merged).max() <= 1e-5
