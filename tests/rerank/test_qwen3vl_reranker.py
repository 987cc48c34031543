"""Qwen3-VL-Reranker parity with an independent, pair-at-a-time reference built from transformers'
Qwen3-VL parts, called as QwenLM/Qwen3-VL-Embedding's ``Qwen3VLReranker`` calls them."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from umr.rerank import load_reranker
from umr.rerank.base import Pair
from umr.core.items import Item
from umr.verify.references.qwen_vl import qwen_vl_utils_fetch_image

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
DEFAULT = "Given a search query, retrieve relevant candidates that answer the query."


def _fetch_image(path, min_pixels, max_pixels):
    return qwen_vl_utils_fetch_image(path, factor=32, min_pixels=min_pixels, max_pixels=max_pixels)


class Reference:
    """The reference reranker's steps, one pair per forward pass."""

    def __init__(self, folder, *, max_length=10240, min_pixels=4 * 32 * 32, max_pixels=1800 * 32 * 32):
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        class ImageOnlyProcessor(Qwen3VLProcessor):  # no torchvision here: no video processor
            @classmethod
            def get_attributes(cls):
                return ["image_processor", "tokenizer"]

        lm = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype=torch.float32).eval()
        self.model = lm.model
        tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
        self.processor = ImageOnlyProcessor(
            image_processor=Qwen2VLImageProcessorPil(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                     image_mean=[0.5] * 3, image_std=[0.5] * 3),
            tokenizer=tokenizer, chat_template=(folder / "chat_template.jinja").read_text())
        vocab = tokenizer.get_vocab()
        self.linear = torch.nn.Linear(lm.lm_head.weight.shape[1], 1, bias=False)
        with torch.no_grad():
            self.linear.weight[0] = lm.lm_head.weight[vocab["yes"]] - lm.lm_head.weight[vocab["no"]]
        self.max_length, self.min_pixels, self.max_pixels = max_length, min_pixels, max_pixels

    @staticmethod
    def side(text, image, prefix):
        content = [{"type": "text", "text": prefix}]
        if image is not None:
            content.append({"type": "image", "image": image})
        if text is not None:
            content.append({"type": "text", "text": text})
        return content

    def truncate(self, tokens, special):
        if len(tokens) <= self.max_length:
            return tokens
        keep = self.max_length - sum(t in special for t in tokens)
        out, n = [], 0
        for t in tokens:
            if t in special:
                out.append(t)
            elif n < keep:
                out.append(t)
                n += 1
        return out

    @torch.no_grad()
    def score(self, query: Item, doc: Item, instruction=None):
        pair = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                {"role": "user", "content": [{"type": "text", "text": "<Instruct>: " + (instruction or DEFAULT)},
                                             *self.side(query.text, query.image, "<Query>:"),
                                             *self.side(doc.text, doc.image, "\n<Document>:")]}]
        text = self.processor.apply_chat_template([pair], tokenize=False, add_generation_prompt=True)
        images = [_fetch_image(x, self.min_pixels, self.max_pixels) for x in (query.image, doc.image) if x]
        inputs = self.processor(text=text, images=images or None, truncation=False, padding=False,
                                do_resize=False, do_convert_rgb=False)
        special = self.processor.tokenizer.all_special_ids
        inputs["input_ids"] = [self.truncate(ids[:-5], special) + ids[-5:] for ids in inputs["input_ids"]]
        padded = self.processor.tokenizer.pad({"input_ids": inputs["input_ids"]}, padding=True,
                                              return_tensors="pt")
        model_inputs = dict(padded)
        if images:
            model_inputs["pixel_values"] = torch.as_tensor(np.asarray(inputs["pixel_values"]))
            model_inputs["image_grid_thw"] = torch.as_tensor(np.asarray(inputs["image_grid_thw"]))
            model_inputs["mm_token_type_ids"] = (padded["input_ids"] == self.model.config.image_token_id).int()
        hidden = self.model(**model_inputs).last_hidden_state[:, -1]
        return float(torch.sigmoid(self.linear(hidden)).squeeze())


@pytest.fixture(scope="module")
def reranker(tiny_reranker_dir):
    return load_reranker(tiny_reranker_dir)


@pytest.fixture(scope="module")
def reference(tiny_reranker_dir):
    return Reference(tiny_reranker_dir)


def _pairs(images):
    q_text = Item.query("a red bicycle leaning on a wall", id="qt")
    q_image = Item.query(image=images["wide"], id="qi")
    q_fused = Item.query("the same scene at night", image=images["tall"], instruction="Find the edited picture.",
                         id="qf")
    c_text = Item.candidate("a bike parked in the street", id="ct")
    c_image = Item.candidate(image=images["rgba"], id="ci")
    c_fused = Item.candidate("a caption", image=images["gray"], id="cf")
    return [Pair(q, c) for q in (q_text, q_image, q_fused) for c in (c_text, c_image, c_fused)]


def test_loaded_by_folder_name_as_the_reranker_family(reranker):
    assert reranker.family == "qwen3-vl-reranker"


def test_scores_equal_the_reference_pair_at_a_time(reranker, reference, images):
    pairs = _pairs(images)
    ours = reranker.score_pairs(pairs).scores
    theirs = np.array([reference.score(p.query, p.candidate, p.query.instruction) for p in pairs])
    assert np.abs(ours - theirs).max() <= 1e-5
    assert np.ptp(ours) > 1e-3  # the pairs really differ


def test_batch_invariance(reranker, images):
    pairs = _pairs(images)
    batched = reranker.score_pairs(pairs, batch_size=9).scores
    alone = np.array([reranker.score_pairs([p]).scores[0] for p in pairs])
    shuffled = reranker.score_pairs(pairs[::-1], batch_size=4).scores[::-1]
    assert np.abs(batched - alone).max() <= 1e-5
    assert np.abs(shuffled - alone).max() <= 1e-5


def test_truncation_keeps_special_tokens_as_the_reference(tiny_reranker_dir, images):
    short = load_reranker(tiny_reranker_dir, max_length=30)
    reference = Reference(tiny_reranker_dir, max_length=30)
    query = Item.query("a long query " * 20, image=images["wide"], id="q")
    for doc in (Item.candidate("a long document " * 30, id="d"), Item.candidate("x", image=images["tall"], id="e")):
        ours = short.score(query, [doc])[0]
        assert abs(ours - reference.score(query, doc)) <= 1e-5
    processed = short.process(Pair(query, Item.candidate("a long document " * 30)))
    assert processed.input_ids.count(short.image_token_id) == 3 * 2  # every image token kept


def test_instruction_default_and_override(tiny_reranker_dir, reranker, reference, images):
    query, doc = Item.query("a cat"), Item.candidate(image=images["wide"])
    custom = load_reranker(tiny_reranker_dir, instruction="Find pictures of animals.")
    assert abs(custom.score(query, [doc])[0] - reference.score(query, doc, "Find pictures of animals.")) <= 1e-5
    assert abs(custom.score(query, [doc])[0] - reranker.score(query, [doc])[0]) > 1e-6


def test_image_token_bounds_parity(tiny_reranker_dir, images):
    bounded = load_reranker(tiny_reranker_dir, min_image_tokens=2, max_image_tokens=3)
    reference = Reference(tiny_reranker_dir, min_pixels=2 * 32 * 32, max_pixels=3 * 32 * 32)
    query, doc = Item.query("a scene"), Item.candidate(image=images["wide"])
    assert abs(bounded.score(query, [doc])[0] - reference.score(query, doc)) <= 1e-5


def test_bad_candidate_image_is_an_error_naming_it(reranker, images, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    pairs = [Pair(Item.query("q"), Item.candidate(image=images["wide"], id="good")),
             Pair(Item.query("q"), Item.candidate(image=str(broken), id="bad"))]
    result = reranker.score_pairs(pairs, on_error="skip")
    assert result.indices.tolist() == [0]
    assert result.errors[0].item_id == "bad" and result.errors[0].index == 1
    assert abs(result.scores[0] - reranker.score_pairs(pairs[:1]).scores[0]) <= 1e-6
