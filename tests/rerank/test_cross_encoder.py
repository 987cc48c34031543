"""Text cross-encoders through the reranker interface."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from umr.rerank import load_reranker
from umr.core.items import Item


@pytest.fixture(scope="module")
def cross_dir(tmp_path_factory):
    from umr.testing import write_tiny_cross_encoder

    return write_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "tiny-cross-encoder")


def test_scores_equal_the_sequence_classifier(cross_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reranker = load_reranker(cross_dir)
    assert reranker.family == "cross-encoder"
    queries = ["a dog in the park", "a red car", "what is the river"]
    docs = ["the dog is running on the grass", "a blue truck on the road", "a river runs by the city"]
    ours = reranker.score(queries, docs)
    tokenizer = AutoTokenizer.from_pretrained(str(cross_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(cross_dir)).eval()
    with torch.no_grad():
        logits = model(**tokenizer(queries, docs, padding=True, truncation=True, return_tensors="pt")).logits[:, 0]
    assert np.abs(ours - torch.sigmoid(logits).numpy()).max() <= 1e-5


def test_items_without_text_are_errors(cross_dir):
    reranker = load_reranker(cross_dir)
    result = reranker.score_pairs(reranker.make_pairs("a dog", ["a cat", Item.candidate(image=b"x", id="img")]),
                                  on_error="skip")
    assert result.indices.tolist() == [0]
    assert result.errors[0].item_id == "img" and "cannot see images" in result.errors[0].reason
