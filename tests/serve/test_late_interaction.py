"""``umr serve`` over a late-interaction (multi-vector) index: search through the micro-batcher
(concurrent queries share a forward pass and each gets its own token matrices back), items added
through the API, token vectors in vLLM's ``/pooling`` shape, the one-vector embeddings routes
refused in one line, and the command line."""

from __future__ import annotations

import base64
import json
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from starlette.testclient import TestClient

from umr import Item
from umr.cli import main
from umr.core.items import ItemError
from umr.index import Index
from umr.models.multivector import MultiVectorResult
from umr.serve import create_app
from umr.serve.batcher import split_result

from .conftest import LiveServer

QUERIES = ["a dog in the park", "a cat on the roof", "a red car", "snow", "the sofa", "a dog and a cat"]


@pytest.fixture
def late_copy(late_index, tmp_path):
    folder, _, tiny = late_index
    shutil.copytree(folder, tmp_path / "ix")
    return tmp_path / "ix", tiny


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_concurrent_searches_share_forward_passes_and_each_gets_its_own_results(late_index):
    folder, _, _ = late_index
    with Index.open(folder) as index:
        want = {q: [(r.id, r.score) for r in index.search(q, k=4)] for q in QUERIES}
    index = Index.open(folder, writable=True)
    app = create_app(index.model, index=index, window_ms=50)
    with LiveServer(app) as server, ThreadPoolExecutor(len(QUERIES)) as pool:
        answers = list(pool.map(lambda q: _post(server.url + "/v1/search", {"text": q, "k": 4}), QUERIES))
        stats = json.loads(urllib.request.urlopen(server.url + "/v1/stats", timeout=30).read())
    for query, answer in zip(QUERIES, answers):
        got = [(r["id"], r["score"]) for r in answer["results"]]
        assert [i for i, _ in got] == [i for i, _ in want[query]]
        assert [s for _, s in got] == pytest.approx([s for _, s in want[query]], abs=1e-5)
    assert stats["batcher"]["items"] == len(QUERIES) and stats["batcher"]["embed_calls"] < len(QUERIES)


def test_split_result_gives_each_caller_its_own_token_matrices():
    matrices = [np.full((n, 2), n, np.float32) for n in (1, 2, 3, 4)]
    result = MultiVectorResult(vectors=matrices, indices=np.array([0, 1, 3, 4]),
                               errors=[ItemError("x", "bad").at(index=2)])
    first, second = split_result(result, [3, 2])
    assert [m.tolist() for m in first.vectors] == [m.tolist() for m in matrices[:2]]
    assert first.indices.tolist() == [0, 1] and [e.index for e in first.errors] == [2]
    assert [len(m) for m in second.vectors] == [3, 4] and second.indices.tolist() == [0, 1] and not second.errors
    assert isinstance(second, MultiVectorResult)


def test_items_added_through_the_api_are_stored_as_token_vectors(late_copy):
    folder, _ = late_copy
    index = Index.open(folder, writable=True)
    model = index.model
    text = "an orange lighthouse on a cliff"
    with TestClient(create_app(model, index=index)) as client:
        added = client.post("/v1/items", json={"items": [{"id": "new/lighthouse", "text": text}]}).json()
        assert added["added"] == 1 and not added["errors"]
        results = client.post("/v1/search", json={"text": "lighthouse", "k": 20}).json()["results"]
    score = {r["id"]: r["score"] for r in results}["new/lighthouse"]
    want = float(model.score([model.encode_queries("lighthouse")], [model.encode_candidates(text)])[0, 0])
    assert score == pytest.approx(want, rel=5e-3)  # float16 token storage


@pytest.mark.parametrize("route, body", [("/v1/embeddings", {"input": ["a page"]}),
                                         ("/v2/embed", {"texts": ["a page"], "input_type": "search_document"}),
                                         ("/v1/embed", {"texts": ["a page"], "input_type": "search_document"})])
def test_embedding_routes_refuse_a_multi_vector_model_in_one_line(late_index, route, body):
    folder, _, _ = late_index
    with Index.open(folder) as index:
        model = index.model
    with TestClient(create_app(model)) as client:
        response = client.post(route, json=body)
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "one vector per token" in message and "/pooling" in message
    assert "\n" not in message


def test_umr_serve_serves_a_late_interaction_index_or_the_model_alone(late_copy, monkeypatch):
    folder, tiny = late_copy
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append(app))
    assert main(["serve", "--index", str(folder)]) == 0
    assert main(["serve", "--model", str(tiny)]) == 0
    with TestClient(served[0]) as client:
        assert len(client.post("/v1/search", json={"text": "a dog", "k": 3}).json()["results"]) == 3
    with TestClient(served[1]) as client:
        assert client.post("/pooling", json={"input": "a dog", "task": "token_embed"}).status_code == 200
        assert client.post("/v1/search", json={"text": "a dog"}).status_code == 404  # no index


def test_pooling_token_embed_returns_the_token_vectors_in_vllm_s_shape(late_index):
    """vLLM's ``/pooling`` with ``task: "token_embed"``: per input, its ``(n_tokens, dim)`` vectors
    as nested lists (or the float32 bytes in base64), equal to the API's token vectors."""
    folder, query_image, _ = late_index
    with Index.open(folder) as index:
        model = index.model
    texts = ["a dog in the park", "a red car"]
    uri = "data:image/png;base64," + base64.b64encode(query_image.read_bytes()).decode("ascii")
    with TestClient(create_app(model)) as client:
        docs = client.post("/pooling", json={"input": texts, "task": "token_embed", "model": model.name}).json()
        queries = client.post("/pooling", json={"input": texts, "input_type": "query"}).json()
        packed = client.post("/pooling", json={"input": texts, "encoding_format": "base64"}).json()
        image = client.post("/pooling", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}]}], "task": "token_embed"}).json()
        wrong = client.post("/pooling", json={"input": texts, "task": "embed"})
    assert docs["object"] == "list" and [d["object"] for d in docs["data"]] == ["pooling", "pooling"]
    assert docs["usage"]["prompt_tokens"] > 0
    for got, want in ((docs, model.encode_candidates(texts)), (queries, model.encode_queries(texts))):
        for row, matrix in zip(got["data"], want):
            np.testing.assert_allclose(np.array(row["data"], np.float32), matrix, atol=1e-6)
    for row, matrix in zip(packed["data"], model.encode_candidates(texts)):
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(row["data"]), "<f4").reshape(-1, model.dim),
                                      np.array(docs["data"][row["index"]]["data"], np.float32))
    want_image = model.embed([Item.candidate(image=str(query_image))]).vectors[0]
    np.testing.assert_allclose(np.array(image["data"][0]["data"], np.float32), want_image, atol=1e-6)
    message = wrong.json()["error"]["message"]
    assert wrong.status_code == 400 and "token_embed" in message and "\n" not in message


def test_pooling_embed_of_a_single_vector_model_equals_v1_embeddings(minilm):
    with TestClient(create_app(minilm)) as client:
        pooled = client.post("/pooling", json={"input": ["a heron", "an otter"], "task": "embed"}).json()
        embedded = client.post("/v1/embeddings", json={"input": ["a heron", "an otter"]}).json()
        refused = client.post("/pooling", json={"input": "a heron", "task": "token_embed"})
    assert [d["data"] for d in pooled["data"]] == [d["embedding"] for d in embedded["data"]]
    assert refused.status_code == 400 and "single-vector" in refused.json()["error"]["message"]
