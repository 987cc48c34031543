"""Cohere's API as its official client calls it: ``ClientV2.embed`` / ``ClientV2.rerank`` on
``/v2``, ``Client.embed`` / ``Client.rerank`` on ``/v1``; responses validated strictly against the client's own types
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


def v1(live):
    return cohere.Client(api_key="unused", base_url=live.url, max_retries=0)


def test_client_v1_embed_answers_plain_floats_equal_to_umr_embed(live, tmp_path):
    documents = umr_embed_vectors(tmp_path, "minilm", [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)])
    response = v1(live).embed(model="minilm", texts=TEXTS, input_type="search_document")
    assert response.response_type == "embeddings_floats" and response.texts == TEXTS
    assert np.abs(np.array(response.embeddings, np.float32) - documents).max() <= 1e-6
    import httpx

    raw = httpx.post(live.url + "/v1/embed", json={"texts": TEXTS[:1], "model": "minilm"}, timeout=60).json()
    parsed = cohere.EmbeddingsFloatsEmbedResponse.model_validate(raw)  # strict, unlike the client
    assert parsed.meta.api_version.version == "1" and parsed.meta.billed_units.input_tokens > 3
    assert np.abs(np.array(parsed.embeddings[0], np.float32) - documents[0]).max() <= 1e-6


def test_client_v1_embed_by_type_is_v2_s_codes(live):
    """With ``embedding_types`` v1 answers v2's object by type: the same codes for the same texts
    (one int8 calibration for both), queries embedded as queries."""
    types = ["float", "int8", "ubinary"]
    old = v1(live).embed(model="minilm", texts=TEXTS, input_type="search_query", embedding_types=types)
    new = v2(live).embed(model="minilm", texts=TEXTS, input_type="search_query", embedding_types=types)
    assert old.response_type == "embeddings_by_type"
    assert old.embeddings.float_ == new.embeddings.float_ and old.embeddings.int8 == new.embeddings.int8
    assert old.embeddings.ubinary == new.embeddings.ubinary and old.embeddings.uint8 is None
    import httpx

    raw = httpx.post(live.url + "/v1/embed", json={"texts": TEXTS, "embedding_types": ["binary"]}, timeout=60).json()
    cohere.EmbeddingsByTypeEmbedResponse.model_validate(raw)
    refused = httpx.post(live.url + "/v1/embed", json={"texts": TEXTS, "embedding_types": []}, timeout=60)
    assert refused.status_code == 400 and "embedding_types" in refused.json()["error"]["message"]


def test_client_v1_embed_batches_of_more_than_96_texts_come_back_in_order(live, minilm):
    """The v1 client cuts ``texts`` into requests of 96 and merges the answers."""
    texts = [f"llama number {i} eats {'grass' if i % 2 else 'hay'}" for i in range(100)]
    response = v1(live).embed(model="minilm", texts=texts, input_type="search_document")
    assert response.texts == texts
    assert np.abs(np.array(response.embeddings, np.float32) - minilm.encode_candidates(texts)).max() <= 1e-6


def test_client_v1_refusals_are_cohere_errors(live):
    with pytest.raises(cohere.NotFoundError):
        v1(live).embed(model="embed-english-v3.0", texts=["llamas"], input_type="search_document")
    with pytest.raises(cohere.BadRequestError) as caught:
        v1(live).embed(model="minilm", texts=["llamas", " "], input_type="search_document")
    assert "texts[1]" in caught.value.body["error"]["message"]


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
        old = v1(live).embed(model=str(tiny_clip.name), images=[data_uri(blue)], input_type="image")
    want = tiny_clip.encode_candidates([Item(image=red), Item(image=blue), Item(image=red, text="a red square")])
    assert np.abs(np.array(images.embeddings.float_) - want[:2]).max() <= 1e-6
    assert np.array(images.embeddings.uint8).min() >= 0 and np.array(images.embeddings.uint8).max() <= 255
    assert np.abs(np.array(fused.embeddings.float_[0]) - want[2]).max() <= 1e-6
    assert old.response_type == "embeddings_floats" and old.texts == []
    assert np.abs(np.array(old.embeddings[0]) - want[1]).max() <= 1e-6
