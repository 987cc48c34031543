"""The reranker interface: ordering, ties, errors, batching, results of an index."""

from __future__ import annotations

import numpy as np
import pytest
from rerank_fixtures import ConceptReranker

from umr.core.results import Result
from umr.core.items import Item, ItemError


def _results(texts):
    return [Result(rank=i + 1, score=1.0 - 0.1 * i, id=f"d{i}", modality="text", path=None, text=t, via="text",
                   meta={}) for i, t in enumerate(texts)]


def test_known_best_moves_to_rank_one_and_ties_keep_the_retrievers_order():
    results = _results(["c01 x", "plain a", "c02 y", "plain b", "c03 z", "plain c"])
    reranked = ConceptReranker().rerank("about c03", results, k=5)
    assert [r.id for r in reranked] == ["d4", "d1", "d3", "d0", "d2", "d5"]
    assert [r.rank for r in reranked] == [1, 2, 3, 4, 5, 6]
    assert reranked[0].score == pytest.approx(0.9) and reranked[0].meta["retrieval_rank"] == 5
    assert reranked[-1].score == pytest.approx(0.5) and "rerank_score" not in reranked[-1].meta  # beyond k


def test_a_bad_candidate_is_reported_and_keeps_its_retrieval_order_below_the_reranked():
    results = _results(["c01 x", "c03 y", "plain", "c03 z"])
    with pytest.warns(UserWarning, match="'d1'.*cannot be decoded"):
        reranked = ConceptReranker(fail={"d1"}).rerank("about c03", results, k=4)
    assert [r.id for r in reranked] == ["d3", "d2", "d0", "d1"]
    assert reranked[-1].meta["rerank_error"] == "image cannot be decoded"
    assert reranked[-1].score == results[1].score  # its retrieval score


def test_reranking_items_and_the_order_record():
    items = [Item.candidate("c05 a", id="a"), Item.candidate("c06 b", id="b")]
    reranker = ConceptReranker()
    assert [i.id for i in reranker.rerank(Item.query("c06"), items, k=2)] == ["b", "a"]
    record = reranker.reranking("c06", items, k=1)
    assert record.order == [0, 1] and np.isnan(record.scores[1])


def test_score_pairs_batches_by_budget_and_restores_input_order():
    reranker = ConceptReranker()
    reranker.cost_budget = 10
    texts = ["c01" + "x" * n for n in (1, 9, 3, 2)]
    scores = reranker.score(Item.query("c01"), texts)
    assert scores.tolist() == pytest.approx([0.9] * 4)
    assert max(reranker.batches) <= 2 and sum(reranker.batches) == 4


def test_one_query_per_candidate_and_errors():
    assert ConceptReranker().score(["c01", "c02"], ["c01", "c01"]).tolist() == pytest.approx([0.9, 0.1])
    reranker = ConceptReranker(fail={"1"})
    with pytest.raises(ValueError, match="one query per candidate"):
        reranker.score(["a", "b"], ["c"])
    with pytest.raises(ItemError, match="'1'"):
        reranker.score("q", ["a", "b"])
    skipped = reranker.score_pairs(reranker.make_pairs("q", ["a", "b", Item.candidate()]), on_error="skip")
    assert skipped.indices.tolist() == [0]
    assert [e.index for e in skipped.errors] == [1, 2]
    assert np.isnan(skipped.full(3)[1])


def test_image_results_become_image_items():
    from umr.rerank.base import as_item

    image = as_item(Result(1, 0.5, "p", "image", "/x/c01.png", "a caption", "pixels", {}), is_query=False)
    assert image.image == "/x/c01.png" and image.text is None
    fused = as_item(Result(1, 0.5, "p", "image,text", "/x/c01.png", "words", "pixels+text", {}), is_query=False)
    assert fused.image == "/x/c01.png" and fused.text == "words"
