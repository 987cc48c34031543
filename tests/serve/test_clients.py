"""LangChain's and LlamaIndex's OpenAI embedding classes against a live ``umr serve``, called as
their users call them (the recipes in docs/guides/serve.md): their vectors are ``umr embed``'s."""

from __future__ import annotations

import numpy as np
import pytest

from umr.serve import create_app

from .conftest import LiveServer
from .test_embeddings import TEXTS, umr_embed_vectors


@pytest.fixture(scope="module")
def live(minilm):
    with LiveServer(create_app(minilm)) as server:
        yield server


@pytest.fixture(scope="module")
def documents(minilm, tmp_path_factory):
    """``umr embed``'s vectors of TEXTS as documents (what an OpenAI-style client asks for)."""
    return umr_embed_vectors(tmp_path_factory.mktemp("embed"), "minilm",
                             [{"id": str(i), "text": t} for i, t in enumerate(TEXTS)])


def close(got, want) -> float:
    got = np.asarray(got, np.float32)
    assert got.shape == np.shape(want)
    return float(np.abs(got - want).max())


def test_langchain_openai_embeddings(live, documents):
    langchain_openai = pytest.importorskip("langchain_openai")
    embeddings = langchain_openai.OpenAIEmbeddings(base_url=live.url + "/v1", api_key="unused", model="minilm",
                                                   check_embedding_ctx_length=False, max_retries=0)
    assert close(embeddings.embed_documents(TEXTS), documents) <= 1e-6
    assert close(embeddings.embed_query(TEXTS[0]), documents[0]) <= 1e-6
    # chunk_size splits a long list into several requests; the vectors stay in order
    assert close(embeddings.embed_documents(TEXTS, chunk_size=2), documents) <= 1e-6


def test_langchain_surfaces_refusals_as_openai_errors(live):
    langchain_openai = pytest.importorskip("langchain_openai")
    import openai

    wrong = langchain_openai.OpenAIEmbeddings(base_url=live.url + "/v1", api_key="unused",
                                              model="text-embedding-3-small", check_embedding_ctx_length=False,
                                              max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        wrong.embed_query("llamas")
    cut = langchain_openai.OpenAIEmbeddings(base_url=live.url + "/v1", api_key="unused", model="minilm", dimensions=64,
                                            check_embedding_ctx_length=False, max_retries=0)
    with pytest.raises(openai.BadRequestError, match="not a Matryoshka model"):
        cut.embed_query("llamas")


def test_llamaindex_openai_like_embedding(live, documents):
    """``OpenAILikeEmbedding`` is LlamaIndex's class for OpenAI-compatible servers: any model name."""
    openai_like = pytest.importorskip("llama_index.embeddings.openai_like")
    embedding = openai_like.OpenAILikeEmbedding(model_name="minilm", api_base=live.url + "/v1", api_key="unused",
                                                max_retries=0)
    assert close(embedding.get_text_embedding_batch(TEXTS), documents) <= 1e-6
    assert close(embedding.get_text_embedding(TEXTS[1]), documents[1]) <= 1e-6
    assert close(embedding.get_query_embedding(TEXTS[0]), documents[0]) <= 1e-6


def test_llamaindex_openai_embedding_with_model_name(live, documents):
    """``OpenAIEmbedding`` checks ``model`` against OpenAI's own models (a ValueError for
    ``model="minilm"``); its ``model_name=`` is what it sends instead."""
    llama_openai = pytest.importorskip("llama_index.embeddings.openai")
    with pytest.raises(ValueError, match="minilm"):
        llama_openai.OpenAIEmbedding(model="minilm", api_base=live.url + "/v1", api_key="unused")
    embedding = llama_openai.OpenAIEmbedding(model_name="minilm", api_base=live.url + "/v1", api_key="unused",
                                             max_retries=0, embed_batch_size=2)
    assert close(embedding.get_text_embedding_batch(TEXTS), documents) <= 1e-6
    assert close(embedding.get_query_embedding(TEXTS[0]), documents[0]) <= 1e-6


def test_query_instructions_through_extra_body(tmp_path):
    """A query instruction (here Qwen3-VL-Embedding's) reaches the server in the request body,
    ``input_type: query`` with ``instruction``: LangChain per call (``extra_body``), LlamaIndex per
    instance (``additional_kwargs``). Without it both embed a query as a document."""
    langchain_openai = pytest.importorskip("langchain_openai")
    openai_like = pytest.importorskip("llama_index.embeddings.openai_like")
    import umr
    from umr.testing import write_tiny_qwen3vl

    folder = write_tiny_qwen3vl(tmp_path / "q3")
    ask = {"input_type": "query", "instruction": "Find the passage that answers the question"}
    rows = [{"id": "q", "text": TEXTS[0], "is_query": True, "instruction": ask["instruction"]},
            {"id": "d", "text": TEXTS[0]}]
    query, document = umr_embed_vectors(tmp_path, str(folder), rows)
    assert np.abs(query - document).max() > 1e-3  # the instruction matters for this model
    model = umr.load_model(folder)
    with LiveServer(create_app(model)) as live:
        url = live.url + "/v1"
        langchain = langchain_openai.OpenAIEmbeddings(base_url=url, api_key="unused", model=str(model.name),
                                                      check_embedding_ctx_length=False, max_retries=0)
        queries = openai_like.OpenAILikeEmbedding(model_name=str(model.name), api_base=url, api_key="unused",
                                                  max_retries=0,
                                                  additional_kwargs={"extra_body": ask})
        assert close(langchain.embed_query(TEXTS[0], extra_body=ask), query) <= 1e-6
        assert close(langchain.embed_query(TEXTS[0]), document) <= 1e-6
        assert close(queries.get_query_embedding(TEXTS[0]), query) <= 1e-6
