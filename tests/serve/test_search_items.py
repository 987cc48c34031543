"""/v1/search, /v1/items, /v1/stats, /v1/rerank, and the batcher that shares forward passes."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from umr import Item
from umr.models.base import Embedder
from umr.serve import MicroBatcher, create_app

from .conftest import data_uri, png_bytes


@pytest.fixture
def client(photo_index):
    with TestClient(create_app(photo_index.model, index=photo_index)) as c:
        yield c


def test_search_by_text_image_upload_and_data_uri(client, photo_index):
    red = png_bytes((220, 20, 20), (64, 48))
    by_uri = client.post("/v1/search", json={"image": data_uri(red), "k": 3}).json()["results"]
    by_upload = client.post("/v1/search", data={"k": "3"}, files={"image": ("q.png", red, "image/png")}).json()["results"]
    direct = photo_index.search(image=red, k=3)
    assert [r["id"] for r in by_uri] == [r.id for r in direct] == [r["id"] for r in by_upload]
    assert by_uri[0]["id"] == "photos/red.png" and abs(by_uri[0]["score"] - direct[0].score) < 1e-5
    top = by_uri[0]
    assert top["modality"] == "image" and top["metadata"] == {"colour": "red"}
    thumb = client.get(top["thumbnail_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert client.get(top["original_url"]).content == red

    text = client.post("/v1/search", json={"text": "red apples", "k": 5, "modality": "text"}).json()["results"]
    assert {r["id"] for r in text} == {"notes/apples", "notes/sea"}
    assert all(r["thumbnail_url"] is None for r in text)
    fused = client.post("/v1/search", data={"text": "red", "k": "5", "where": '{"colour": "blue"}'},
                        files={"image": ("q.png", red, "image/png")}).json()["results"]
    assert {r["id"] for r in fused} == {"photos/blue.png", "notes/sea"}


def test_search_refusals(client):
    assert client.post("/v1/search", json={"text": "  "}).status_code == 400
    assert client.post("/v1/search", json={"text": "a", "modality": "audio"}).status_code == 400
    assert client.post("/v1/search", json={"text": "a", "k": 0}).status_code == 422
    assert client.post("/v1/search", json={"text": "a", "rerank": True}).status_code == 400  # no reranker loaded
    assert client.post("/v1/search", content=b"{not json", headers={"content-type": "application/json"}).status_code == 422


def test_add_delete_and_stats(client, photo_index):
    before = client.get("/v1/stats").json()
    assert before["model"] == photo_index.model.name and before["dim"] == photo_index.model.dim
    assert before["items"] == len(photo_index) and before["modalities"]["image"] >= 3
    yellow = png_bytes((240, 230, 20), (40, 40))
    r = client.post("/v1/items", data={"id": "up/yellow", "text": "a yellow card", "metadata": '{"colour": "yellow"}'},
                    files={"image": ("y.png", yellow, "image/png")})
    assert r.status_code == 200 and r.json()["added"] == 1, r.text
    r = client.post("/v1/items", json={"items": [{"id": "up/note", "text": "hello there"}]})
    assert r.json()["added"] == 1
    after = client.get("/v1/stats").json()
    assert after["items"] == before["items"] + 2
    assert after["modalities"].get("image,text", 0) == before["modalities"].get("image,text", 0) + 1
    hits = client.post("/v1/search", json={"image": data_uri(yellow), "text": "a yellow card", "k": 1}).json()["results"]
    assert hits[0]["id"] == "up/yellow" and hits[0]["metadata"] == {"colour": "yellow"}
    assert client.get(hits[0]["original_url"]).content == yellow
    assert client.delete("/v1/items/up/yellow").status_code == 200
    assert client.delete("/v1/items/up/note").status_code == 200
    assert client.delete("/v1/items/up/note").status_code == 404
    assert client.get("/v1/stats").json()["items"] == before["items"]
    assert client.get("/v1/thumbnails/up/yellow").status_code == 404


def test_rerank_endpoint(photo_index, tmp_path):
    rerank = pytest.importorskip("umr.rerank")
    from umr.testing import write_tiny_cross_encoder

    reranker = rerank.load_reranker(write_tiny_cross_encoder(tmp_path / "ce"))
    docs = ["llamas eat grass", "the Eiffel tower", "grass and hay"]
    with TestClient(create_app(photo_index.model, index=photo_index, reranker=reranker)) as c:
        r = c.post("/v1/rerank", json={"query": "what do llamas eat?", "documents": docs, "top_n": 2}).json()
        searched = c.post("/v1/search", json={"text": "red apples", "k": 2, "rerank": True})
    want = reranker.score("what do llamas eat?", docs)
    assert [x["index"] for x in r["results"]] == list(np.argsort(-want)[:2])
    assert np.allclose([x["relevance_score"] for x in r["results"]], np.sort(want)[::-1][:2], atol=1e-5)
    assert searched.status_code == 200 and len(searched.json()["results"]) == 2


def test_no_reranker_no_index(minilm):
    with TestClient(create_app(minilm)) as c:
        assert c.post("/v1/rerank", json={"query": "a", "documents": ["b"]}).status_code == 404
        assert c.post("/v1/search", json={"text": "a"}).status_code == 404
        stats = c.get("/v1/stats").json()
        assert stats == {"model": "minilm", "dim": 384, "reranker": None, "batching": True,
                         "batcher": {"enabled": True, "embed_calls": 0, "items": 0, "model_seconds": 0.0,
                                     "model_cpu_seconds": 0.0}}
        assert c.get("/docs").status_code == 200 and "/v1/embeddings" in c.get("/openapi.json").json()["paths"]


class Counting:
    """A model wrapper that counts embed calls and can be held inside one."""

    def __init__(self, model):
        self.model, self.calls, self.sizes = model, 0, []
        self.name, self.dim = model.name, model.dim
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def embed(self, items, **kw):
        self.calls += 1
        self.sizes.append(len(items))
        self.entered.set()
        self.release.wait(30)
        return self.model.embed(items, **kw)

    def __getattr__(self, name):  # the rest of the model's contract (check, fits_one_pass, ...)
        return getattr(self.model, name)


def test_concurrent_requests_share_forward_passes(minilm):
    texts = [f"sentence number {i} about llamas" for i in range(12)]
    counting = Counting(minilm)
    batcher = MicroBatcher(counting, window_ms=200)

    async def go():
        return await asyncio.gather(*[batcher.embed([Item(text=t, id="0")]) for t in texts])
    results = asyncio.run(go())
    batcher.close()
    assert counting.calls < len(texts) and sum(counting.sizes) == len(texts)
    alone = minilm.encode_candidates(texts)
    assert np.abs(np.vstack([r.result.vectors for r in results]) - alone).max() <= 1e-6
    assert [r.tokens for r in results] == [len(minilm.token_spans(t)) for t in texts]
    assert batcher.stats()["items"] == len(texts) and batcher.stats()["embed_calls"] == counting.calls
    bad = MicroBatcher(minilm, window_ms=50)

    async def mixed():
        return await asyncio.gather(bad.embed([Item(text="fine", id="0")]), bad.embed([Item(id="x")]))
    ok, failed = asyncio.run(mixed())
    bad.close()
    assert len(ok.result.vectors) == 1 and not ok.result.errors and failed.result.errors[0].index == 0
    # one bad item spoils nothing else


class FourAPass(Embedder):
    """Four items a forward pass, padded cost (items x longest text in words) within 12."""

    name, dim, batch_size, cost_budget = "four", 4, 4, 12

    def _cost(self, item):
        return len(item.text.split())

    def _embed_batch(self, items):
        return torch.tensor([[len(item.text), 1.0, 0.0, 0.0] for item in items])


def test_requests_queued_behind_a_busy_model_fill_its_passes():
    """While the model is busy the next batch accumulates; it reaches the model as one embed
    call per forward pass, filled by the model's own cost contract (FIFO, never past a pass)."""
    counting = Counting(FourAPass())
    counting.release.clear()
    batcher = MicroBatcher(counting, window_ms=0)
    texts = ["w"] * 6 + ["a b c d e f g"] + ["x y"] * 3  # the 7-word text makes a pass of its own

    async def go():
        first = asyncio.ensure_future(batcher.embed([Item(text="first", id="0")]))
        while not counting.entered.is_set():
            await asyncio.sleep(0.005)
        rest = [asyncio.ensure_future(batcher.embed([Item(text=t, id="0")])) for t in texts]
        await asyncio.sleep(0.05)
        counting.release.set()
        return await asyncio.gather(first, *rest)
    answers = asyncio.run(go())
    batcher.close()
    assert counting.sizes == [1, 4, 2, 1, 3]
    want = counting.model.encode_candidates(["first", *texts])
    assert np.abs(np.vstack([a.result.vectors for a in answers]) - want).max() <= 1e-6


def test_a_slow_request_never_blocks_health_checks(minilm):
    from .conftest import LiveServer
    import httpx

    counting = Counting(minilm)
    counting.release.clear()
    with LiveServer(create_app(counting)) as live:
        slow = threading.Thread(target=lambda: httpx.post(live.url + "/v1/embeddings", json={"input": "x"}, timeout=30))
        slow.start()
        assert counting.entered.wait(10)
        assert httpx.get(live.url + "/healthz", timeout=5).json() == {"status": "ok"}  # while the model is busy
        counting.release.set()
        slow.join(30)
