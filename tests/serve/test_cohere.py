"""Cohere's API as its official client calls it: ``ClientV2.embed`` / ``ClientV2.rerank`` on
``/v2``, ``Client.rerank`` on ``/v1``; responses validated strictly against the client's own types
(the client itself builds them without validation)."""

from __future__ import annotations

import numpy as np
import pytest

from umr import Item
from umr.core.quantize import sign_bits
from umr.serve import create_app

from .conftest import LiveServer, data_uri, png_bytes
from .test_embeddings import TEXTS, umr_embed_vectors

cohere = pytest.importorskip("cohere")


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory):
    from umr.rerank import load_reranker
    from umr.testing import write_tiny_cross_encoder

    return load_reranker(write_tiny_cross_encoder(tmp_path_factory.mktemp("ce") / "ce"))


@pytest.fixture(scope="module")
def live(minilm, cross_encoder):
    with LiveServer(create_app(minilm, reranker=cross_encoder)) as server:
        yield server


def v2(live):
    return cohere.ClientV2(api_key="unused", base_url=live.url, max_retries=0)


def test_client_v2_embeds_queries_as_float_and_int8_equal_to_umr_embed(live, minilm, tmp_path):
    queries = umr_embed_vectors(tmp_path, "minilm", [{"id": str(i), "text": t, "is_query": True}
                                                     for i, t in enumerate(TEXTS)])
    response = v2(live).embed(model="minilm", texts=TEXTS, input_type="search_query",
                              embedding_types=["float", "int8"])
    floats = np.array(response.embeddings.float_, np.float32)
    int8 = np.array(response.embeddings.int8)
    assert floats.shape == (3, 384) and np.abs(floats - queries).max() <= 1e-6
    assert np.abs(floats - minilm.encode_queries(TEXTS)).max() <= 1e-6
    assert int8.shape == (3, 384) and int8.min() >= -128 and int8.max() <= 127
    scale = (int8 * floats).sum() / (floats * floats).sum()  # int8 = rint(127 x / a): one scale for all
    assert scale > 127 and np.abs(int8 - np.rint(scale * floats)).max() <= 1
    cosine = (int8 * floats).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(floats, axis=1)
    assert cosine.min() >= 0.999
    assert response.texts == TEXTS and response.meta.billed_units.input_tokens > 10


def test_documents_and_queries_differ_where_the_model_has_prompts_and_every_type_is_cohere_s(live, minilm):
    import httpx

    body = {"model": "minilm", "texts": TEXTS, "input_type": "search_document",
            "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"]}
    raw = httpx.post(live.url + "/v2/embed", json=body, timeout=60).json()
    parsed = cohere.EmbedByTypeResponse.model_validate(raw)  # strict: ids, int ranges, shapes
    e = parsed.embeddings
    floats = np.array(e.float_, np.float32)
    assert np.abs(floats - minilm.encode_candidates(TEXTS)).max() <= 1e-6
    assert np.array_equal(np.array(e.uint8), np.array(e.int8) + 128)
    assert np.array_equal(np.array(e.ubinary), sign_bits(floats)) and len(e.ubinary[0]) == 48
    assert np.array_equal(np.array(e.binary), np.array(e.ubinary) - 128)
    import base64

    assert np.array_equal(np.frombuffer(base64.b64decode(e.base64[0]), "<f4"), floats[0])
    # the same scale for every request: codes of one text do not depend on its neighbours
    alone = v2(live).embed(model="minilm", texts=TEXTS[:1], input_type="search_document", embedding_types=["int8"])
    assert alone.embeddings.int8[0] == e.int8[0]


def test_client_v2_rerank_returns_top_n_in_score_order(live, cross_encoder):
    docs = ["Llamas eat grass and hay.", "The Eiffel Tower is in Paris.", "Llamas graze on grass in the Andes.",
            "Stock markets fell today."]
    response = v2(live).rerank(model="tiny-ce", query="what do llamas eat?", documents=docs, top_n=2)
    want = np.asarray(cross_encoder.score("what do llamas eat?", docs))
    assert [r.index for r in response.results] == list(np.argsort(-want)[:2])
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True) and np.allclose(scores, np.sort(want)[::-1][:2], atol=1e-6)
    import httpx

    raw = httpx.post(live.url + "/v2/rerank", json={"query": "llamas", "documents": [{"text": d} for d in docs],
                                                    "max_tokens_per_doc": 2}, timeout=60).json()
    parsed = cohere.V2RerankResponse.model_validate(raw)
    cut = np.asarray(cross_encoder.score("llamas", ["Llamas eat", "The Eiffel", "Llamas graze", "Stock markets"]))
    assert [r.index for r in parsed.results] == list(np.argsort(-cut))


def test_client_v1_rerank_works_unchanged(live, cross_encoder):
    docs = ["Llamas eat grass.", "Paris is in France.", "Hay is dried grass."]
    client = cohere.Client(api_key="unused", base_url=live.url, max_retries=0)
    response = client.rerank(model="tiny-ce", query="what do llamas eat?", documents=docs, top_n=3,
                             return_documents=True)
    want = np.asarray(cross_encoder.score("what do llamas eat?", docs))
    assert [r.index for r in response.results] == list(np.argsort(-want))
    assert [r.document.text for r in response.results] == [docs[i] for i in np.argsort(-want)]


def test_output_dimension_on_minilm_is_a_400_naming_the_reason(live):
    with pytest.raises(cohere.BadRequestError) as caught:
        v2(live).embed(model="minilm", texts=["llamas"], input_type="search_query", embedding_types=["float"],
                       output_dimension=64)
    assert caught.value.status_code == 400
    message = caught.value.body["error"]["message"]
    assert "not a Matryoshka model" in message and "\n" not in message


def test_bad_requests_are_400s_naming_what_is_wrong(live):
    import httpx

    def refused(body, words):
        r = httpx.post(live.url + "/v2/embed", json={"model": "minilm", **body}, timeout=60)
        assert r.status_code == 400, r.text
        assert words in r.json()["error"]["message"]

    refused({"texts": ["a"], "images": [data_uri(png_bytes())]}, "exactly one of texts, images and inputs")
    refused({"texts": ["a"], "embedding_types": ["float", "int4"]}, "'int4'")
    refused({"texts": ["a"], "input_type": "reranking"}, "input_type 'reranking'")
    refused({"texts": ["fine", ""]}, "texts[1]")
    refused({"texts": ["one two three four five"], "max_tokens": 2, "truncate": "NONE"},
            "exceed max_tokens=2 with truncate=NONE")
    r = httpx.post(live.url + "/v2/embed", json={"model": "gpt", "texts": ["a"]}, timeout=60)
    assert r.status_code == 404


def test_truncate_start_and_end_keep_each_end_of_the_text(live, minilm):
    import httpx

    text = "llamas eat grass while tourists photograph the mountains"
    def vector(side):
        r = httpx.post(live.url + "/v2/embed", json={"texts": [text], "max_tokens": 3, "truncate": side}, timeout=60)
        return np.array(r.json()["embeddings"]["float"][0])
    spans = minilm.token_spans(text)
    head, tail = text[:spans[2][1]], text[spans[-3][0]:]
    want = minilm.encode_candidates([head, tail])
    assert np.abs(vector("END") - want[0]).max() <= 1e-6
    assert np.abs(vector("START") - want[1]).max() <= 1e-6


def test_images_and_fused_inputs_on_an_image_model(tiny_clip):
    red, blue = png_bytes((220, 20, 20)), png_bytes((20, 20, 220))
    with LiveServer(create_app(tiny_clip)) as live:
        client = v2(live)
        images = client.embed(model=str(tiny_clip.name), images=[data_uri(red), data_uri(blue)],
                              input_type="image", embedding_types=["float", "uint8"])
        fused = client.embed(model=str(tiny_clip.name), input_type="search_document", embedding_types=["float"],
                             inputs=[cohere.EmbedInput(content=[
                                 cohere.TextEmbedContent(text="a red square"),
                                 cohere.ImageUrlEmbedContent(image_url=cohere.EmbedImageUrl(url=data_uri(red)))])])
    want = tiny_clip.encode_candidates([Item(image=red), Item(image=blue), Item(image=red, text="a red square")])
    assert np.abs(np.array(images.embeddings.float_) - want[:2]).max() <= 1e-6
    assert np.array(images.embeddings.uint8).min() >= 0 and np.array(images.embeddings.uint8).max() <= 255
    assert np.abs(np.array(fused.embeddings.float_[0]) - want[2]).max() <= 1e-6
