"""Reranking where a search ranks: ``Index.search(rerank=...)`` and ``umr search --rerank``."""

from __future__ import annotations

import json

import pytest
from rerank_fixtures import ConceptReranker

from umr.cli import main


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(["a dog runs in the park c01", "a dog sleeps on the sofa c02",
                              "dogs play in the snow c03", "a cat on the roof c04", "a red car c05"]):
        (corpus / f"doc{i}.txt").write_text(text)
    index = root / "ix"
    assert main(["index", str(corpus), "--index", str(index), "--model", "minilm", "--no-progress"]) == 0
    return index


def test_index_search_reranks_the_top_k(text_index):
    from umr.index import Index

    with Index.open(text_index) as index:
        plain = index.search("a dog in the park c03", k=4)
        reranked = index.search("a dog in the park c03", k=3, rerank=ConceptReranker(), rerank_k=4)
    assert "c03" in reranked[0].text and len(reranked) == 3
    assert reranked[0].meta["retrieval_rank"] == next(r.rank for r in plain if "c03" in r.text)
    assert [r.rank for r in reranked] == [1, 2, 3]


def test_cli_search_rerank(text_index, tmp_path, capsys):
    from umr.testing import write_tiny_cross_encoder

    cross = write_tiny_cross_encoder(tmp_path / "tiny-cross-encoder")
    assert main(["search", "--index", str(text_index), "a dog", "-k", "4", "--rerank", str(cross),
                 "--rerank-k", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 4
    head = [r["meta"]["rerank_score"] for r in results[:3]]
    assert head == sorted(head, reverse=True)
    assert "rerank_score" not in results[3]["meta"]
    assert main(["search", "--index", str(text_index), "a dog", "--rerank", str(cross), "--rerank-k", "0"]) == 2
