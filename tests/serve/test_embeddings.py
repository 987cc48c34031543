"""/v1/embeddings is OpenAI-compatible: the official client works unchanged and its vectors are umr's."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from umr import Item
from umr.serve import create_app

from .conftest import LiveServer, data_uri, png_bytes

openai = pytest.importorskip("openai")

TEXTS = ["what do llamas eat?", "Llamas are grazers: they eat grass and hay.", "The Eiffel Tower is in Paris."]


def umr_embed_vectors(tmp_path, model_name, rows):
    from umr.cli import main

    src = tmp_path / "items.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["embed", "--model", model_name, "--input", str(src), "--output", str(tmp_path / "v.npy"),
                 "--no-progress"]) == 0
    return np.load(tmp_path / "v.npy")


def test_openai_client_vectors_equal_umr_embed(tmp_path, minilm):
    expected = umr_embed_vectors(tmp_path, "minilm", [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)])
    with LiveServer(create_app(minilm)) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        floats = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
        default = client.embeddings.create(model="minilm", input=TEXTS)  # the client asks for base64
        one = client.embeddings.create(model="minilm", input=TEXTS[1])
    got = np.array([d.embedding for d in floats.data], dtype=np.float32)
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert np.abs(got - expected).max() <= 1e-6
    assert np.abs(np.array([d.embedding for d in default.data], dtype=np.float32) - expected).max() <= 1e-6
    assert np.abs(np.array(one.data[0].embedding) - expected[1]).max() <= 1e-6
    assert floats.model == "minilm" and floats.usage.prompt_tokens > 10


def test_base64_decodes_to_the_same_floats(minilm):
    from starlette.testclient import TestClient

    with TestClient(create_app(minilm)) as client:
        f = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "float"}).json()
        b = client.post("/v1/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    for fd, bd in zip(f["data"], b["data"]):
        decoded = np.frombuffer(base64.b64decode(bd["embedding"]), dtype="<f4")
        assert np.array_equal(decoded, np.array(fd["embedding"], dtype=np.float32))


def test_dimensions_query_instruction_and_unknown_model(tmp_path):
    """``dimensions`` cuts and renormalises where the model is trained for it (Qwen3-VL-Embedding)."""
    from starlette.testclient import TestClient

    import umr
    from umr.testing import write_tiny_qwen3vl

    q3 = umr.load_model(write_tiny_qwen3vl(tmp_path / "q3"))
    full = q3.encode_queries(["llamas"], instruction="Find the passage.")
    with TestClient(create_app(q3)) as client:
        r = client.post("/v1/embeddings", json={"input": "llamas", "input_type": "query",
                                                "instruction": "Find the passage.", "dimensions": 8}).json()
        same = client.post("/v1/embeddings", json={"input": "llamas", "dimensions": q3.dim})
        too_many = client.post("/v1/embeddings", json={"input": "llamas", "dimensions": 10_000})
        unknown = client.post("/v1/embeddings", json={"input": "llamas", "model": "text-embedding-3-small"})
    cut = full[0, :8] / np.linalg.norm(full[0, :8])
    assert np.abs(np.array(r["data"][0]["embedding"]) - cut).max() <= 1e-6
    assert same.status_code == 200 and len(same.json()["data"][0]["embedding"]) == q3.dim
    assert too_many.status_code == 400 and unknown.status_code == 404
    assert "error" in unknown.json()


def test_dimensions_on_a_model_not_trained_for_matryoshka_is_a_400(minilm):
    """minilm's first 64 dimensions are no embedding: refused in one line, as ``umr eval --dims``
    refuses it (it returned a renormalised prefix), the model's own width still accepted; the
    openai client and LangChain surface the 400 as ``BadRequestError``."""
    from starlette.testclient import TestClient

    with TestClient(create_app(minilm)) as client:
        cut = client.post("/v1/embeddings", json={"input": "llamas", "dimensions": 64})
        full = client.post("/v1/embeddings", json={"input": "llamas", "dimensions": 384})
    assert cut.status_code == 400 and full.status_code == 200
    message = cut.json()["error"]["message"]
    assert "'minilm' is not a Matryoshka model" in message and "\n" not in message
    with LiveServer(create_app(minilm)) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="not a Matryoshka model"):
            client.embeddings.create(model="minilm", input="llamas", dimensions=64)


def test_images_as_chat_messages_and_infinity_modality(tiny_clip):
    from starlette.testclient import TestClient

    red = png_bytes((220, 20, 20))
    with TestClient(create_app(tiny_clip)) as client:
        fused = client.post("/v1/embeddings", json={"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": data_uri(red)}}, {"type": "text", "text": "a red square"}]}]})
        image = client.post("/v1/embeddings", json={"input": [data_uri(red)], "modality": "image"})
    assert fused.status_code == 200 and image.status_code == 200
    want_fused = tiny_clip.encode_candidates([Item(image=red, text="a red square")])[0]
    want_image = tiny_clip.encode_candidates([Item(image=red)])[0]
    assert np.abs(np.array(fused.json()["data"][0]["embedding"]) - want_fused).max() <= 1e-6
    assert np.abs(np.array(image.json()["data"][0]["embedding"]) - want_image).max() <= 1e-6


def test_concurrent_requests_of_mixed_lengths_all_answered(minilm):
    """Counting tokens for ``usage`` while a batch is tokenised must not disturb its padding."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    texts = [" ".join(["llama"] * (1 + i % 23)) + f" {i}" for i in range(64)]
    with LiveServer(create_app(minilm)) as live, httpx.Client(timeout=60) as http:
        def ask(text):
            r = http.post(live.url + "/v1/embeddings", json={"input": text})
            return r.status_code, r.json()
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, texts))
    assert [status for status, _ in answers] == [200] * len(texts)
    got = np.array([body["data"][0]["embedding"] for _, body in answers], dtype=np.float32)
    assert np.abs(got - minilm.encode_candidates(texts)).max() <= 1e-5
