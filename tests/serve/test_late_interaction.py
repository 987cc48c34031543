"""``umr serve`` over a late-interaction (multi-vector) index: search through the micro-batcher
(concurrent queries share a forward pass and each gets its own token matrices back), items added
through the API, the embeddings routes refused in one line, and the command line."""

from __future__ import annotations

import json
import shutil
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from starlette.testclient import TestClient

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
                                         ("/v2/embed", {"texts": ["a page"], "input_type": "search_document"})])
def test_embedding_routes_refuse_a_multi_vector_model_in_one_line(late_index, route, body):
    folder, _, _ = late_index
    with Index.open(folder) as index:
        model = index.model
    with TestClient(create_app(model)) as client:
        response = client.post(route, json=body)
    message = response.json()["error"]["message"]
    assert response.status_code == 400 and "one vector per token" in message and "umr embed" in message
    assert "\n" not in message


def test_umr_serve_serves_a_late_interaction_index_and_refuses_the_model_alone(late_copy, monkeypatch, capsys):
    folder, tiny = late_copy
    served = {}
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.setdefault("app", app))
    assert main(["serve", "--index", str(folder)]) == 0
    with TestClient(served["app"]) as client:
        results = client.post("/v1/search", json={"text": "a dog", "k": 3}).json()["results"]
    assert len(results) == 3
    capsys.readouterr()
    assert main(["serve", "--model", str(tiny)]) == 2
    err = capsys.readouterr().err.strip()
    assert "late-interaction" in err and "--index" in err and len(err.splitlines()) == 1, err
