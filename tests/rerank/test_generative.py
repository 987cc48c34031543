"""Zero-shot generative reranking: P(True) from the model's own next-token logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umr.rerank import load_reranker
from umr.rerank.base import Pair
from umr.rerank.generative import DEFAULT_PROMPTS
from umr.core.items import Item


@pytest.fixture(scope="module")
def qwen2vl(tiny_qwen2vl_dir):
    return load_reranker(tiny_qwen2vl_dir)


@pytest.fixture(scope="module")
def qwen3vl(tiny_reranker_dir):
    return load_reranker(tiny_reranker_dir, family="zero-shot")


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return load_reranker(tiny_llava_dir)


def _independent(reranker, query: Item, doc: Item, question: str) -> float:
    """Softmax over the True/False logits of the last position, from one unbatched forward pass."""
    from PIL import Image

    content, images = [], []
    for item, label in ((query, "Query"), (doc, "Candidate")):
        if item.image is not None:
            content.append({"type": "image"})
            images.append(Image.open(item.image).convert("RGB"))
        if item.text is not None:
            content.append({"type": "text", "text": f"{label}: {item.text}\n"})
    content.append({"type": "text", "text": question})
    processor = reranker.processor
    text = processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                         add_generation_prompt=True)
    inputs = processor(text=[text], images=images or None, return_tensors="pt")
    with torch.no_grad():
        logits = reranker.model(**inputs).logits[0, -1]
    vocab = processor.tokenizer.get_vocab()
    true, false = float(logits[vocab["True"]]), float(logits[vocab["False"]])
    return float(np.exp(true) / (np.exp(true) + np.exp(false)))


def _items(images):
    queries = [Item.query("a red bicycle", id="qt"), Item.query(image=images["wide"], id="qi"),
               Item.query("the same at night", image=images["tall"], id="qf")]
    docs = [Item.candidate("a bike on the street", id="ct"), Item.candidate(image=images["rgba"], id="ci"),
            Item.candidate("a caption", image=images["gray"], id="cf")]
    return queries, docs


@pytest.mark.slow
@pytest.mark.parametrize("which", ["qwen2vl", "qwen3vl", "llava"])
def test_score_is_the_softmax_over_the_answer_tokens(request, which, images):
    reranker = request.getfixturevalue(which)
    queries, docs = _items(images)
    pairs = [Pair(q, d) for q in queries for d in docs]
    scores = reranker.score_pairs(pairs, batch_size=4).scores
    for pair, score in zip(pairs, scores):
        key = f"{pair.query.modality}->{pair.candidate.modality}"
        assert abs(score - _independent(reranker, pair.query, pair.candidate, DEFAULT_PROMPTS[key])) <= 1e-5
    assert np.ptp(scores) > 1e-3


def test_task_prompts_are_configurable(tiny_qwen2vl_dir, qwen2vl, images):
    custom = load_reranker(tiny_qwen2vl_dir, prompts={"mytask": "Is it a bicycle? True or False"})
    query, doc = Item.query("a bicycle"), Item.candidate(image=images["wide"])
    ours = custom.score(query, [doc], task="mytask")[0]
    assert abs(ours - _independent(custom, query, doc, "Is it a bicycle? True or False")) <= 1e-5
    assert abs(custom.score(query, [doc])[0] - qwen2vl.score(query, [doc])[0]) <= 1e-6  # other tasks: defaults
    assert "daily-life image" in custom.question(Pair(query, doc))


def test_image_bounds_change_the_image_processing(tiny_qwen2vl_dir, qwen2vl, images):
    small = load_reranker(tiny_qwen2vl_dir, max_image_tokens=1)
    query, doc = Item.query("a scene"), Item.candidate(image=images["wide"])
    assert small.processor.image_processor.size["longest_edge"] == 28 * 28
    assert abs(small.score(query, [doc])[0] - qwen2vl.score(query, [doc])[0]) > 1e-6


def test_equal_answer_logits_keep_the_retrievers_order(tiny_qwen2vl_dir, images):
    tied = load_reranker(tiny_qwen2vl_dir)
    vocab = tied.tokenizer.get_vocab()
    head = tied.model.get_output_embeddings().weight
    with torch.no_grad():  # untie, then make True and False score alike for every input
        tied.model.lm_head.weight = torch.nn.Parameter(head.detach().clone())
        tied.model.lm_head.weight[vocab["False"]] = tied.model.lm_head.weight[vocab["True"]]
    _, docs = _items(images)
    results = docs + [Item.candidate("another", id="c4")]
    reordered = tied.rerank("a query", results, k=3)
    assert [d.id for d in reordered] == ["ct", "ci", "cf", "c4"]
    assert tied.score("a query", docs).tolist() == [0.5, 0.5, 0.5]
