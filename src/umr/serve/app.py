"""The HTTP API: OpenAI-style embeddings, search over an index, reranking, items, and the search page.

Build it with :func:`create_app`; ``umr serve`` runs it under uvicorn. The routes live by concern
(:mod:`~umr.serve.embeddings`, :mod:`~umr.serve.pooling`, :mod:`~umr.serve.search`,
:mod:`~umr.serve.rerank`, :mod:`~umr.serve.items`, :mod:`~umr.serve.pictures`); this module builds the app and its guards.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from ..index.base import StoreUnreachable
from .cohere import cohere_router
from .embeddings import (ContentPart, EmbeddingRequest, ImageURL, Message, embedding_items, embeddings_router,
                         json_response, truncate)
from .items import UPLOADS, ItemsRequest, NewItem, items_router
from .pictures import PAGE_PX, THUMBNAIL_PX, pictures_router, thumbnail_url
from .pooling import pooling_router
from .rerank import RerankRequest, rerank_router
from .search import SearchRequest, search_router
from .video import videos_router
from .security import Limits, RequestRefused, Security
from .server import Server, check_items, embed_or_refuse, naming

__all__ = ["PAGE_PX", "PUBLIC", "STATIC", "THUMBNAIL_PX", "UPLOADS", "BodyLimit", "ContentPart", "EmbeddingRequest",
           "ImageURL", "ItemsRequest", "Message", "NewItem", "RerankRequest", "SearchRequest", "Server", "TokenGuard",
           "check_items", "create_app", "embed_or_refuse", "embedding_items", "json_response", "naming",
           "thumbnail_url", "truncate"]

log = logging.getLogger("umr.serve")
STATIC = Path(__file__).parent / "static"


def create_app(model, *, index=None, reranker=None, limits: Limits | None = None,
               security: Security | None = None, batching: bool = True, window_ms: float = 2.0,
               torch_threads: int | None = None) -> FastAPI:
    """The FastAPI app serving ``model`` (and ``index`` / ``reranker`` when given).

    The app owns the index from then on: it writes to it from the model's thread and closes it on shutdown.
    ``torch_threads`` sets torch's intra-op threads for the model thread (None: as they are;
    ``umr serve`` passes :func:`~umr.serve.batcher.server_torch_threads`).
    """
    server = Server(model, index, reranker, limits or Limits(), security or Security(), batching, window_ms,
                    torch_threads)

    @asynccontextmanager
    async def lifespan(app):
        yield
        if server.index is not None:  # in the thread that wrote to it (its digest store is bound to it)
            await server.batcher.run(server.index.close)
        server.batcher.close()

    app = FastAPI(title="umr", version="0.1.0", lifespan=lifespan,
                  description="Universal multimodal retrieval: embeddings, search, reranking.")
    app.state.server = server
    _install_guards(app, server)
    for router in (embeddings_router, pooling_router, rerank_router, cohere_router, search_router, items_router,
                   pictures_router, videos_router):
        app.include_router(router(server))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/v1/stats")
    async def stats():
        model = server.model
        out = {"model": str(model.name), "dim": int(model.dim), "reranker": getattr(server.reranker, "name", None),
               "batching": server.batching, "batcher": server.batcher.stats()}
        if server.index is not None:
            index = server.index
            n, modalities = await server.in_index(lambda: (len(index), index.modality_counts()))
            out.update(items=n, modalities=modalities, index_model=index.model_name)
        return out

    return app


def _error(status: int, message: str) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


#: paths served without a token: the page's own static files and the health check
PUBLIC = ("/", "/healthz", "/favicon.ico")


class TokenGuard:
    """Refuse (401) every call without the bearer token, except the page's files and the health check."""

    def __init__(self, app, security: Security):
        self.app, self.security = app, security

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.security.token is not None:
            path = scope.get("path", "")
            header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
            if not (path in PUBLIC or path.startswith("/static/")) and not self.security.authorized(header):
                response = JSONResponse({"error": {"message": "missing or wrong bearer token",
                                                   "type": "authentication_error", "code": 401}},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


class BodyLimit:
    """Refuse a body over ``max_bytes`` (413) by its declared length, or while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send)
        messages, total = [], 0
        while True:  # read the whole (bounded) body first, then hand it on
            message = await receive()
            if message["type"] != "http.request":
                messages.append(message)
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                return await self._refuse(send)
            messages.append(message)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()
        return await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        await _error(413, f"request body over the limit of {self.max_bytes:,} bytes")({"type": "http"}, None, send)


def _install_guards(app: FastAPI, server: Server) -> None:
    limits, security = server.limits, server.security
    if security.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(security.cors_origins),
                           allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization", "Content-Type"])

    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(TokenGuard, security=security)

    @app.exception_handler(RequestRefused)
    async def refused(request: Request, exc: RequestRefused):
        return _error(exc.status, str(exc))

    @app.exception_handler(StoreUnreachable)
    async def unreachable(request: Request, exc: StoreUnreachable):  # a Milvus server gone: say so, not 500
        return _error(503, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        reasons = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(422, reasons[:2000])

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("internal error on %s", request.url.path)  # the trace stays in the server's log
        return _error(500, "internal server error")
