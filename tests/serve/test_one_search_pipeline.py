"""``Index.search``, ``umr search`` and ``POST /v1/search`` run one search pipeline: the same query
and rerank settings give the same results, with one rerank depth rule (the store returns
``max(k, rerank_k)`` candidates, the reranker reorders the top ``rerank_k``, the first ``k`` return);
over a late-interaction (multi-vector) index too, with text and image queries."""

from __future__ import annotations

import base64
import json

import pytest
from starlette.testclient import TestClient

from umr.cli import main
from umr.index import Index
from umr.rerank import load_reranker
from umr.serve import create_app
from umr.testing import write_tiny_cross_encoder

DOCS = ["a dog runs in the park", "a dog sleeps on the sofa", "dogs play in the snow", "a cat on the roof",
        "a red car in the street", "a dog and a cat in the park", "the park at night", "a puppy chases a ball",
        "an old dog by the fire", "children play in the park", "a horse in a field", "a dog swims in a lake"]
QUERY = "a dog playing in the park"


@pytest.fixture(scope="module")
def text_index(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    corpus = root / "corpus"
    corpus.mkdir()
    for i, text in enumerate(DOCS):
        (corpus / f"doc{i:02d}.txt").write_text(text)
    assert main(["index", str(corpus), "--index", str(root / "ix"), "--model", "minilm", "--no-progress"]) == 0
    return root / "ix"


def _cli(index, capsys, *argv, query: str | None = QUERY) -> list[tuple]:
    capsys.readouterr()
    assert main(["search", "--index", str(index), *([query] if query else []), "--json", *argv]) == 0
    return [_row(r["id"], r["score"], r["meta"]) for r in json.loads(capsys.readouterr().out)]


def _http(client, **body) -> list[tuple]:
    response = client.post("/v1/search", json={"text": QUERY, **body} if "image" not in body else body)
    assert response.status_code == 200, response.text
    return [_row(r["id"], r["score"], r["metadata"]) for r in response.json()["results"]]


def _row(item_id: str, score: float, meta: dict) -> tuple:
    """What a result says: id, score, retrieval rank, whether it was reranked."""
    return item_id, score, meta.get("retrieval_rank"), "rerank_score" in meta


def _same(got: list[tuple], want: list[tuple]) -> bool:
    """The same results in the same order, scores equal up to float noise."""
    return [(i, rank, was) for i, _, rank, was in got] == [(i, rank, was) for i, _, rank, was in want] \
        and [score for _, score, _, _ in got] == pytest.approx([score for _, score, _, _ in want], abs=1e-5)


@pytest.mark.parametrize("k, rerank_k", [(2, 5), (6, 3)])
def test_the_three_entry_points_give_the_same_reranked_results(text_index, tmp_path, capsys, k, rerank_k):
    cross = write_tiny_cross_encoder(tmp_path / "tiny-cross-encoder")
    reranker = load_reranker(cross)
    with Index.open(text_index) as index:
        plain = index.search(QUERY, k=len(DOCS))
        direct = [_row(r.id, r.score, r.meta) for r in index.search(QUERY, k=k, rerank=reranker, rerank_k=rerank_k)]
    cli = _cli(text_index, capsys, "-k", str(k), "--rerank", str(cross), "--rerank-k", str(rerank_k))
    with TestClient(create_app(_recorded_model(text_index), index=Index.open(text_index),
                               reranker=reranker)) as client:
        http = _http(client, k=k, rerank=True, rerank_k=rerank_k)
        http_plain = _http(client, k=k)

    assert len(direct) == k
    assert _same(cli, direct) and _same(http, direct)
    # the depth rule: the top rerank_k were reranked; below them the retrieval order stays
    reranked = [rank for _, _, rank, was_reranked in direct if was_reranked]
    assert len(reranked) == min(k, rerank_k) and all(rank <= rerank_k for rank in reranked)
    assert [i for i, _, _, was_reranked in direct if not was_reranked] == [r.id for r in plain[rerank_k:k]]
    assert [i for i, _, _, _ in http_plain] == [r.id for r in plain[:k]]


def _recorded_model(index_dir):
    """The index's own model, as ``umr serve --index`` loads it."""
    with Index.open(index_dir) as index:
        return index.model


def test_a_late_interaction_index_answers_the_three_entry_points_alike(late_index, text_index, capsys):
    """The same MaxSim results from ``Index.search``, ``umr search`` and ``POST /v1/search``, for a
    text query and an image query, in the single-vector result shape."""
    index_dir, query_image, _ = late_index
    with Index.open(index_dir) as index:
        assert index.model.multi_vector
        by_text = [_row(r.id, r.score, r.meta) for r in index.search(QUERY, k=6)]
        by_image = [_row(r.id, r.score, r.meta) for r in index.search(image=str(query_image), k=6)]
    assert len(by_text) == len(by_image) == 6
    assert _same(_cli(index_dir, capsys, "-k", "6"), by_text)
    assert _same(_cli(index_dir, capsys, "-k", "6", "--image", str(query_image), query=None), by_image)
    uri = "data:image/png;base64," + base64.b64encode(query_image.read_bytes()).decode("ascii")
    with TestClient(create_app(_recorded_model(index_dir), index=Index.open(index_dir, writable=True))) as client:
        assert _same(_http(client, k=6), by_text)
        assert _same(_http(client, image=uri, k=6), by_image)
        late = client.post("/v1/search", json={"text": QUERY, "k": 1}).json()
    with TestClient(create_app(_recorded_model(text_index), index=Index.open(text_index))) as client:
        single = client.post("/v1/search", json={"text": QUERY, "k": 1}).json()
    assert set(late) == set(single) and set(late["results"][0]) == set(single["results"][0])
