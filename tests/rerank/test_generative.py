"""Zero-shot generative reranking: P(True) from the model's own next-token logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umr.rerank import load_reranker
from umr.rerank.base import Pair
from umr.core.items import Item
from umr.verify.references.rerank_generative import GenerativeRerankerReference


@pytest.fixture(scope="module")
def qwen2vl(tiny_qwen2vl_dir):
    return load_reranker(tiny_qwen2vl_dir)


@pytest.fixture(scope="module")
def qwen3vl(tiny_reranker_dir):
    return load_reranker(tiny_reranker_dir, family="zero-shot")


@pytest.fixture(scope="module")
def llava(tiny_llava_dir):
    return load_reranker(tiny_llava_dir)


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
    reference = GenerativeRerankerReference(reranker.folder)  # one unbatched forward pass per pair
    for pair, score in zip(pairs, scores):
        assert abs(score - reference.score(pair.query, pair.candidate)) <= 1e-5
    assert np.ptp(scores) > 1e-3


def test_task_prompts_are_configurable(tiny_qwen2vl_dir, qwen2vl, images):
    custom = load_reranker(tiny_qwen2vl_dir, prompts={"mytask": "Is it a bicycle? True or False"})
    query, doc = Item.query("a bicycle"), Item.candidate(image=images["wide"])
    ours = custom.score(query, [doc], task="mytask")[0]
    reference = GenerativeRerankerReference(tiny_qwen2vl_dir, prompts={"text->image": "Is it a bicycle? True or False"})
    assert abs(ours - reference.score(query, doc)) <= 1e-5
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
