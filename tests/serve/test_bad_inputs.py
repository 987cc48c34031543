"""One bad input among several refuses the request, as OpenAI's API does: 400, naming the input
(``input 1``, ``message 1``, ``item 'b'``, ``documents[1]``), nothing embedded or added. Before:
an empty input was a 422, a bad image named no input, a blank item was half-added and an empty
document to rerank was a 500."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from umr.serve import create_app

from .conftest import data_uri, png_bytes

EMPTY = "has neither text nor image (an empty or blank text is no text)"


def _refused(response, message: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {"message": message, "type": "invalid_request_error", "code": 400}


def test_embeddings_name_the_bad_input(tiny_clip):
    red = png_bytes((220, 20, 20))
    with TestClient(create_app(tiny_clip)) as client:
        _refused(client.post("/v1/embeddings", json={"input": ["a red square", "", "a blue sea"]}), f"input 1: {EMPTY}")
        _refused(client.post("/v1/embeddings", json={"input": ["a red square", " \n "]}), f"input 1: {EMPTY}")
        _refused(client.post("/v1/embeddings", json={"input": [data_uri(red), data_uri(b"\x89PNG\r\n\x1a\n")],
                                                     "modality": "image"}), "input 1: not an image file (8 bytes)")
        cut = client.post("/v1/embeddings", json={"input": [data_uri(red), data_uri(red[:60])], "modality": "image"})
        assert cut.status_code == 400 and cut.json()["error"]["message"].startswith("input 1: ")
        _refused(client.post("/v1/embeddings", json={"messages": [{"content": "a red square"}, {"content": "  "}]}),
                 f"message 1: {EMPTY}")
        assert client.post("/v1/embeddings", json={"input": ["a red square", "a blue sea"]}).status_code == 200


def test_items_are_all_checked_before_any_is_added(photo_index):
    before = sorted(photo_index.ids())
    with TestClient(create_app(photo_index.model, index=photo_index)) as client:
        _refused(client.post("/v1/items", json={"items": [{"id": "a", "text": "a yellow card"},
                                                          {"id": "b", "text": "   "}]}), f"item 'b': {EMPTY}")
        _refused(client.post("/v1/items", json={"items": [{"id": "c", "text": "fine"},
                                                          {"id": "d", "image": data_uri(b"GIF89a")}]}),
                 "item 'd': not an image file (6 bytes)")
        assert sorted(photo_index.ids()) == before
        ok = client.post("/v1/items", json={"items": [{"id": "a", "text": "a yellow card"}]})
    assert ok.status_code == 200 and ok.json()["added"] == 1


def test_rerank_names_the_empty_document(photo_index, tmp_path):
    rerank = pytest.importorskip("umr.rerank")
    from umr.testing import write_tiny_cross_encoder

    reranker = rerank.load_reranker(write_tiny_cross_encoder(tmp_path / "ce"))
    with TestClient(create_app(photo_index.model, index=photo_index, reranker=reranker)) as client:
        _refused(client.post("/v1/rerank", json={"query": "llamas", "documents": ["grass", ""]}),
                 f"documents[1]: {EMPTY}")
        _refused(client.post("/v1/rerank", json={"query": "llamas", "documents": ["grass", {"text": " "}]}),
                 f"documents[1]: {EMPTY}")
        _refused(client.post("/v1/rerank", json={"query": "llamas", "documents": [{"text": 5}]}),
                 "documents[0]: a document is a string or an object with a string 'text'")
        _refused(client.post("/v1/rerank", json={"query": " ", "documents": ["grass"]}), "query: the query is empty")
        assert client.post("/v1/rerank", json={"query": "llamas", "documents": ["grass"]}).status_code == 200


def test_a_lost_index_server_is_a_503_naming_it(tiny_clip):
    """A Milvus server that stops answering while `umr serve` searches it: 503 with the store's
    one line (it was a 500 "internal server error")."""
    from umr.index import StoreUnreachable

    class LostIndex:
        model_name = "tiny"

        def represent(self, item):
            return item

        def search_vectors(self, vectors, **options):
            raise StoreUnreachable("the Milvus server at http://127.0.0.1:1 stopped answering (UNAVAILABLE); "
                                   "what was committed is kept: run the same command again once the server is back")

        def close(self):
            pass

    with TestClient(create_app(tiny_clip, index=LostIndex())) as client:
        response = client.post("/v1/search", json={"text": "a red square"})
    assert response.status_code == 503
    assert response.json()["error"]["message"].startswith("the Milvus server at http://127.0.0.1:1 stopped answering")
