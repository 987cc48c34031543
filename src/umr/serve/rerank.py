"""``POST /v1/rerank``: Cohere / Jina / TEI's shape (``query``, ``documents``, ``top_n``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

import numpy as np

from ..core.items import ItemError
from ..models.base import word_spans
from .security import RequestRefused, check_count, check_text
from .server import Server, naming


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(default=None, ge=1)
    model: str | None = None
    return_documents: bool = False


async def rank_documents(server: Server, query: str, documents: list[str | dict[str, Any]], top_n: int | None,
                         max_words: int | None = None) -> tuple[list[str], list[int], np.ndarray]:
    """Score the documents against the query: their texts, their positions best first (at most
    ``top_n``), and every document's score (``/v1/rerank`` and Cohere's ``/v2/rerank``).

    A document is a string or an object with a string ``text`` (Cohere's and vLLM's shapes), cut
    to its first ``max_words`` words when given. 404 when no reranker is loaded; 400 for an empty
    query or naming the document (``documents[2]``) that is bad or that the reranker cannot read.
    """
    limits = server.limits
    if server.reranker is None:
        raise RequestRefused(404, "no reranker loaded: start the server with --rerank MODEL")
    if not check_text(query, limits, "query").strip():
        raise RequestRefused(400, "query: the query is empty")
    check_count(len(documents), limits, "documents")
    docs = []
    for i, d in enumerate(documents):
        text = d if isinstance(d, str) else d.get("text")
        if not isinstance(text, str):
            raise RequestRefused(400, f"documents[{i}]: a document is a string or an object with a string 'text'")
        with naming(f"documents[{i}]"):
            text = check_text(text, limits, "document")
        if max_words is not None:
            spans = word_spans(text)
            if len(spans) > max_words:
                text = text[:spans[max_words - 1][1]]
        docs.append(text)
    try:
        scores = await server.batcher.run(server.reranker.score, query, docs)
    except ItemError as exc:  # an empty document, or one the reranker cannot read: named, as inputs are
        raise RequestRefused(400, f"documents[{exc.index}]: {exc.reason}") from None
    order = sorted(range(len(docs)), key=lambda i: -float(scores[i]))[: top_n or len(docs)]
    return docs, order, scores


def rerank_router(server: Server) -> APIRouter:
    """``/v1/rerank``, with the reranker the server was started with."""
    router = APIRouter()

    @router.post("/v1/rerank")
    async def rerank(body: RerankRequest):
        docs, order, scores = await rank_documents(server, body.query, body.documents, body.top_n)
        results = [{"index": i, "relevance_score": float(scores[i]),
                    **({"document": {"text": docs[i]}} if body.return_documents else {})} for i in order]
        return {"model": str(server.reranker.name), "results": results}

    return router
