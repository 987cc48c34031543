"""Qwen3-VL-Reranker parity with an independent, pair-at-a-time reference built from transformers'
Qwen3-VL parts, called as QwenLM/Qwen3-VL-Embedding's ``Qwen3VLReranker`` calls them (the
reference ``umr verify --reranker`` runs)."""

from __future__ import annotations


import numpy as np
import pytest

from umr.rerank import load_reranker
from umr.rerank.base import Pair
from umr.core.items import Item
from umr.verify.references.rerank_qwen3vl import Qwen3VLRerankerReference as Reference


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
    theirs = np.array([reference.score(p.query, p.candidate) for p in pairs])
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
    instructed = Item.query("a cat", instruction="Find pictures of animals.")
    assert abs(custom.score(query, [doc])[0] - reference.score(instructed, doc)) <= 1e-5
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
