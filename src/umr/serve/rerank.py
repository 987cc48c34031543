"""``POST /v1/rerank``: Cohere / Jina / TEI's shape (``query``, ``documents``, ``top_n``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from ..core.items import ItemError
from .security import RequestRefused, check_count, check_text
from .server import Server, naming


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(default=None, ge=1)
    model: str | None = None
    return_documents: bool = False


def rerank_router(server: Server) -> APIRouter:
    """``/v1/rerank``, with the reranker the server was started with."""
    router = APIRouter()
    limits = server.limits

    @router.post("/v1/rerank")
    async def rerank(body: RerankRequest):
        if server.reranker is None:
            raise RequestRefused(404, "no reranker loaded: start the server with --rerank MODEL")
        if not check_text(body.query, limits, "query").strip():
            raise RequestRefused(400, "query: the query is empty")
        check_count(len(body.documents), limits, "documents")
        docs = []
        for i, d in enumerate(body.documents):
            text = d if isinstance(d, str) else d.get("text")
            if not isinstance(text, str):
                raise RequestRefused(400, f"documents[{i}]: a document is a string or an object with a string 'text'")
            with naming(f"documents[{i}]"):
                docs.append(check_text(text, limits, "document"))
        try:
            scores = await server.batcher.run(server.reranker.score, body.query, docs)
        except ItemError as exc:  # an empty document, or one the reranker cannot read: named, as inputs are
            raise RequestRefused(400, f"documents[{exc.index}]: {exc.reason}") from None
        order = sorted(range(len(docs)), key=lambda i: -float(scores[i]))[: body.top_n or len(docs)]
        results = [{"index": i, "relevance_score": float(scores[i]),
                    **({"document": {"text": docs[i]}} if body.return_documents else {})} for i in order]
        return {"model": str(server.reranker.name), "results": results}

    return router
