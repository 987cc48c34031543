"""``POST /v1/search``: the index's search pipeline (:func:`umr.index.pipeline.run_search`, the
one ``Index.search`` and ``umr search`` run), with its steps where the server runs them."""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar
from collections.abc import Coroutine
from urllib.parse import quote

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..core.items import Item, Modality
from ..core.results import Result
from ..index.pipeline import RERANK_K, SearchQuery, run_search
from ..index.representation import Unrepresentable
from ..rerank.base import Reranker
from .forms import body_doc, form_or_json
from .pictures import thumbnail_url
from .security import RequestRefused, check_text, image_from_url
from .server import Server, embed_or_refuse
from .video import image_or_video_upload, video_fields, video_from_url

T = TypeVar("T")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = Field(default=None, description="a data: URI")
    video: str | None = Field(default=None, description="a data: URI (models that see video)")
    instruction: str | None = None
    modality: str | list[str] | None = None
    where: dict[str, Any] | None = None
    k: int = Field(default=10, ge=1)
    rerank: bool = False
    rerank_k: int = Field(default=RERANK_K, ge=1, description="how many top results the reranker reorders")


class ServerStages:
    """The pipeline's steps for one request, run from a worker thread: the query embedded and
    reranked on the model's thread (through the batcher, which shares forward passes between
    requests), the index searched under its lock; a step's failure is the request's refusal."""

    def __init__(self, server: Server, index, loop: asyncio.AbstractEventLoop):
        self.server, self.index, self.loop = server, index, loop

    def represent(self, query: Item) -> Item:
        try:
            return self.index.represent(query)
        except Unrepresentable:
            raise RequestRefused(422, f"the query image has no readable text and {self.index.model_name} cannot "
                                      f"see pixels: add query text") from None

    def embed(self, query: Item) -> np.ndarray:
        return self._on_loop(embed_or_refuse(self.server, [query], ["the query"])).result.vectors

    def search(self, vectors: np.ndarray, **options) -> list[list[Result]]:
        try:
            with self.server.index_lock:
                return self.index.search_vectors(vectors, **options)
        except ValueError as exc:
            raise RequestRefused(400, " ".join(str(exc).split())) from None

    def rerank(self, reranker: Reranker, query: Item, results: list[Result], k: int) -> list[Result]:
        return self._on_loop(self.server.batcher.run(reranker.rerank, query, results, k))

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()


def search_router(server: Server) -> APIRouter:
    """Search over the server's index, reranked by its reranker when asked."""
    router = APIRouter()
    limits, security = server.limits, server.security

    @router.post("/v1/search", openapi_extra=body_doc(SearchRequest, "JSON (image as a data: URI) or a form "
                                                                     "with the same fields and an image file"))
    async def search(request: Request):
        index = server.need_index()
        body, upload = await form_or_json(request, SearchRequest)
        for name, value in (("k", body.k), ("rerank_k", body.rerank_k if body.rerank else 0)):
            if value > limits.max_k:
                raise RequestRefused(413, f"{name}={value} is over the limit of {limits.max_k}")
        text = check_text(body.text, limits, "query text")
        check_text(body.instruction, limits, "instruction")
        image, video = image_or_video_upload(upload, limits) if upload else (  # an upload: either
            image_from_url(body.image, limits, security) if body.image else None,
            video_from_url(body.video, limits, security) if body.video else None)
        if (text is None or not text.strip()) and image is None and video is None:
            raise RequestRefused(400, "a query needs text, an image, or both")
        modality = body.modality
        try:
            for m in ([modality] if isinstance(modality, str) else modality or []):
                Modality.parse(m)
            query = SearchQuery(text if text and text.strip() else None, image, body.instruction, modality,
                                body.where, body.k, rerank_k=body.rerank_k, video=video)
        except ValueError as exc:
            raise RequestRefused(400, str(exc)) from None
        if body.rerank and server.reranker is None:
            raise RequestRefused(400, "rerank asked for, but no reranker is loaded (--rerank MODEL)")
        stages = ServerStages(server, index, asyncio.get_running_loop())
        results = await asyncio.to_thread(run_search, query, stages, server.reranker if body.rerank else None)
        return {"object": "list", "model": str(server.model.name), "results": [result_json(r) for r in results]}

    return router


def result_json(result) -> dict[str, Any]:
    record = {"id": result.id, "path": result.path, "meta": result.meta}
    return {"rank": result.rank, "id": result.id, "score": result.score, "modality": result.modality,
            "text": result.text, "via": result.via, "metadata": result.meta,
            "thumbnail_url": thumbnail_url(record),
            "original_url": "/v1/originals/" + quote(result.id, safe="") if thumbnail_url(record) else None,
            **video_fields(result)}
