"""The HTTP API: OpenAI-style embeddings, search over an index, reranking, items, and the search page.

Build it with :func:`create_app`; ``umr serve`` runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..core.atomic import write_bytes_atomic
from ..core.images import load_image
from ..core.items import Item, Modality
from ..index.base import StoreUnreachable
from ..index.index import Unrepresentable
from .batcher import MicroBatcher
from .cohere_v2 import cohere_routes
from .common import check_items, check_model_name, embed_or_refuse, json_response, naming, rerank, truncate
from .security import (Limits, RequestRefused, Security, check_count, check_image_bytes, check_text,
                       image_from_url)

log = logging.getLogger("umr.serve")
STATIC = Path(__file__).parent / "static"
THUMBNAIL_PX = 384
#: longest side of a PDF page shown large
PAGE_PX = 1400
#: where images added through /v1/items are kept, inside the index folder
UPLOADS = "uploads"


# -- request bodies ------------------------------------------------------------------------------

class ImageURL(BaseModel):
    url: str


class ContentPart(BaseModel):
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageURL | None = None


class Message(BaseModel):
    role: str = "user"
    content: str | list[ContentPart]


class EmbeddingRequest(BaseModel):
    """OpenAI's body, plus vLLM's ``messages``, infinity's ``modality``, ``instruction`` and ``input_type``."""

    model_config = ConfigDict(extra="ignore")
    input: str | list[str] | list[int] | list[list[int]] | None = None
    messages: list[Message] | None = None
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1)
    modality: Literal["text", "image"] = "text"
    input_type: Literal["query", "document", "passage", "search_query", "search_document"] = "document"
    instruction: str | None = None
    user: str | None = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = Field(default=None, description="a data: URI")
    instruction: str | None = None
    modality: str | list[str] | None = None
    where: dict[str, Any] | None = None
    k: int = Field(default=10, ge=1)
    rerank: bool = False


class RerankRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(default=None, ge=1)
    model: str | None = None
    return_documents: bool = False


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=512)
    text: str | None = None
    image: str | None = Field(default=None, description="a data: URI")
    metadata: dict[str, Any] = Field(default_factory=dict)


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[NewItem]


# -- the server's state --------------------------------------------------------------------------

@dataclass
class Server:
    """What one running server holds: the model (behind its batcher), the index and the reranker."""

    model: Any
    index: Any = None
    reranker: Any = None
    limits: Limits = field(default_factory=Limits)
    security: Security = field(default_factory=Security)
    batching: bool = True
    window_ms: float = 2.0
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        self.batcher = MicroBatcher(self.model, window_ms=self.window_ms, enabled=self.batching,
                                    torch_threads=self.torch_threads)
        #: index reads and writes take turns (the FAISS store is not safe to write while read)
        self.index_lock = threading.Lock()

    def need_index(self):
        if self.index is None:
            raise RequestRefused(404, "this server has no index: start it with --index DIR")
        return self.index

    async def in_index(self, fn, *args):
        """``fn(*args)`` under the index lock, off the event loop."""
        def locked():
            with self.index_lock:
                return fn(*args)
        return await asyncio.to_thread(locked)


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
    _embedding_routes(app, server)
    _index_routes(app, server)
    app.include_router(cohere_routes(server))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

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


# -- embeddings ----------------------------------------------------------------------------------

def embedding_items(body: EmbeddingRequest, limits: Limits, security: Security) -> list[Item]:
    """The request's inputs as items: strings, images (infinity), or chat messages (vLLM); a bad
    one (empty, not an image, too large) refuses the request, naming it (``input 2``)."""
    is_query = body.input_type in ("query", "search_query")
    instruction = check_text(body.instruction, limits, "instruction") if is_query else None
    items = []
    if body.messages is not None:
        if body.input is not None:
            raise RequestRefused(400, "give either input or messages, not both")
        check_count(len(body.messages), limits, "messages")
        for i, message in enumerate(body.messages):
            with naming(f"message {i}"):
                items.append(_message_item(message, limits, security, is_query, instruction, i))
        check_items(items, [f"message {i}" for i in range(len(items))])
        return items
    inputs = [body.input] if isinstance(body.input, str) else (body.input or [])
    if any(not isinstance(v, str) for v in inputs):
        raise RequestRefused(400, "token-id inputs are not supported: send strings")
    check_count(len(inputs), limits)
    for i, value in enumerate(inputs):
        with naming(f"input {i}"):
            if body.modality == "image":
                items.append(Item(image=image_from_url(value, limits, security), is_query=is_query,
                                  instruction=instruction, id=str(i)))
            else:
                items.append(Item(text=check_text(value, limits), is_query=is_query, instruction=instruction,
                                  id=str(i)))
    check_items(items, [f"input {i}" for i in range(len(items))])
    return items


def _message_item(message: Message, limits: Limits, security: Security, is_query: bool,
                  instruction: str | None, i: int) -> Item:
    parts = [ContentPart(type="text", text=message.content)] if isinstance(message.content, str) else message.content
    texts = [p.text for p in parts if p.type == "text" and p.text]
    images = [p.image_url.url for p in parts if p.type == "image_url" and p.image_url is not None]
    if len(images) > 1:
        raise RequestRefused(400, "at most one image per item")
    text = check_text("\n".join(texts), limits) if texts else None
    image = image_from_url(images[0], limits, security) if images else None
    return Item(text=text, image=image, is_query=is_query, instruction=instruction, id=str(i))


def _embedding_routes(app: FastAPI, server: Server) -> None:
    model, limits, security = server.model, server.limits, server.security

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": str(model.name), "object": "model", "owned_by": "umr"}]}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest):
        check_model_name(model, body.model)
        items = embedding_items(body, limits, security)
        embedded = await embed_or_refuse(server.batcher, items, [f"{'message' if body.messages is not None else 'input'} {i}"
                                                         for i in range(len(items))])
        vectors = truncate(embedded.result.vectors, body.dimensions, model)
        data = []
        for i, v in enumerate(np.ascontiguousarray(vectors, dtype="<f4")):  # as orjson writes arrays
            value = base64.b64encode(v.tobytes()).decode("ascii") if body.encoding_format == "base64" else v
            data.append({"object": "embedding", "index": i, "embedding": value})
        return json_response({"object": "list", "data": data, "model": str(model.name),
                              "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}})

    @app.post("/v1/rerank")
    async def rerank_v1(body: RerankRequest):
        docs, order, scores = await rerank(server.batcher, server.reranker, body.query, body.documents, limits,
                                           body.top_n)
        results = [{"index": i, "relevance_score": float(scores[i]),
                    **({"document": {"text": docs[i]}} if body.return_documents else {})} for i in order]
        return {"model": str(server.reranker.name), "results": results}


# -- search and items ------------------------------------------------------------------------------

def thumbnail_url(record: dict[str, Any]) -> str | None:
    """Where the page finds the item's picture: image files, and PDF pages (rendered)."""
    path = record.get("path")
    if not path:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in _image_suffixes() and not (suffix == ".pdf" and isinstance(_page(record), int)):
        return None
    return "/v1/thumbnails/" + quote(record["id"], safe="")


def _page(record: dict[str, Any]):
    return (record.get("meta") or {}).get("page")


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def _result_json(result) -> dict[str, Any]:
    record = {"id": result.id, "path": result.path, "meta": result.meta}
    return {"rank": result.rank, "id": result.id, "score": result.score, "modality": result.modality,
            "text": result.text, "via": result.via, "metadata": result.meta,
            "thumbnail_url": thumbnail_url(record),
            "original_url": "/v1/originals/" + quote(result.id, safe="") if thumbnail_url(record) else None}


async def _form_or_json(request: Request, model_cls):
    """A body as ``model_cls``, from JSON or from a multipart form (image as an uploaded file)."""
    upload = None
    try:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return model_cls.model_validate_json(await request.body()), None
        form = await request.form(max_files=1, max_fields=32)
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                upload = await value.read()
            elif key in ("where", "metadata", "modality") and value.strip().startswith(("{", "[")):
                try:
                    fields[key] = json.loads(value)
                except json.JSONDecodeError:
                    raise RequestRefused(400, f"form field {key} is not valid JSON") from None
            elif value != "":
                fields[key] = value
        return model_cls.model_validate(fields), upload
    except ValidationError as exc:  # bad JSON too
        raise RequestValidationError(exc.errors(include_url=False, include_input=False)) from None


def _search_body(model_cls, description: str) -> dict:
    return {"requestBody": {"description": description, "content": {
        "application/json": {"schema": model_cls.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {"image": {"type": "string",
                                                                                     "format": "binary"}}}}}}}


def _index_routes(app: FastAPI, server: Server) -> None:
    limits, security = server.limits, server.security

    @app.post("/v1/search", openapi_extra=_search_body(SearchRequest, "JSON (image as a data: URI) or a form "
                                                                     "with the same fields and an image file"))
    async def search(request: Request):
        index = server.need_index()
        body, upload = await _form_or_json(request, SearchRequest)
        if body.k > limits.max_k:
            raise RequestRefused(413, f"k={body.k} is over the limit of {limits.max_k}")
        text = check_text(body.text, limits, "query text")
        check_text(body.instruction, limits, "instruction")
        image = check_image_bytes(upload, limits) if upload else (
            image_from_url(body.image, limits, security) if body.image else None)
        if (text is None or not text.strip()) and image is None:
            raise RequestRefused(400, "a query needs text, an image, or both")
        modality = body.modality
        try:
            for m in ([modality] if isinstance(modality, str) else modality or []):
                Modality.parse(m)
        except ValueError as exc:
            raise RequestRefused(400, str(exc)) from None
        query = Item.query(text=text if text and text.strip() else None, image=image,
                           instruction=body.instruction, id="query")
        try:
            query = await asyncio.to_thread(index.represent, query)
        except Unrepresentable:
            raise RequestRefused(422, f"the query image has no readable text and {index.model_name} cannot see "
                                      f"pixels: add query text") from None
        vector = (await embed_or_refuse(server.batcher, [query], ["the query"])).result.vectors
        k = body.k * 3 if body.rerank and server.reranker is not None else body.k
        try:
            results = (await server.in_index(lambda: index.search_vectors(vector, k=k, modality=modality,
                                                                          where=body.where)))[0]
        except ValueError as exc:
            raise RequestRefused(400, " ".join(str(exc).split())) from None
        if body.rerank:
            if server.reranker is None:
                raise RequestRefused(400, "rerank asked for, but no reranker is loaded (--rerank MODEL)")
            results = (await server.batcher.run(server.reranker.rerank, query, results, k))[: body.k]
        return {"object": "list", "model": str(server.model.name), "results": [_result_json(r) for r in results]}

    @app.post("/v1/items", openapi_extra=_search_body(ItemsRequest, "JSON {items: [...]} (images as data: URIs), "
                                                                   "or a form with id, text, metadata and an image file"))
    async def add_items(request: Request):
        index = server.need_index()
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            one, upload = await _form_or_json(request, NewItem)
            wanted = [(one, check_image_bytes(upload, limits) if upload else None)]
        else:
            body, _ = await _form_or_json(request, ItemsRequest)
            check_count(len(body.items), limits, "items")
            wanted = []
            for it in body.items:
                with naming(f"item {it.id!r}"):
                    wanted.append((it, image_from_url(it.image, limits, security) if it.image else None))
        for it, _ in wanted:  # every item is checked before any upload is kept or anything added
            with naming(f"item {it.id!r}"):
                check_text(it.text, limits)
        check_items([Item.candidate(text=it.text, image=image) for it, image in wanted],
                    [f"item {it.id!r}" for it, _ in wanted])
        items = []
        for it, image in wanted:
            path = await asyncio.to_thread(_keep_upload, index.folder, image) if image else None
            items.append(Item.candidate(text=it.text, image=path, id=it.id, **it.metadata))

        def add():
            with server.index_lock:
                return index.add(items)
        summary = await server.batcher.run(add)
        return {"added": summary.added, "updated": summary.updated, "unchanged": summary.unchanged,
                "errors": summary.errors + summary.skipped}

    @app.delete("/v1/items/{item_id:path}")
    async def delete_item(item_id: str):
        index = server.need_index()
        if not await server.in_index(index.delete, [item_id]):
            raise RequestRefused(404, "no such item in the index")
        return {"deleted": item_id}

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

    async def image_record(item_id: str) -> dict[str, Any]:
        index = server.need_index()
        record = (await server.in_index(index.get, [item_id]))[0]
        if record is None:
            raise RequestRefused(404, "no such item in the index")
        if thumbnail_url(record) is None or not Path(record["path"]).is_file():
            raise RequestRefused(404, "this item has no image")
        return record

    @app.get("/v1/thumbnails/{item_id:path}")
    async def thumbnail(item_id: str):
        record = await image_record(item_id)
        data = await asyncio.to_thread(_picture, record, limits, THUMBNAIL_PX, "JPEG")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @app.get("/v1/originals/{item_id:path}")
    async def original(item_id: str):
        record = await image_record(item_id)
        if Path(record["path"]).suffix.lower() == ".pdf":  # the page, rendered
            data = await asyncio.to_thread(_picture, record, limits, PAGE_PX, "PNG")
            return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
        return FileResponse(record["path"], headers={"Cache-Control": "private, max-age=300"})


def _keep_upload(folder: Path, data: bytes) -> str:
    """Store an uploaded image in the index folder under its content hash (so results can show it)."""
    import hashlib

    from PIL import Image

    fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
    target = Path(folder) / UPLOADS / f"{hashlib.blake2b(data, digest_size=16).hexdigest()}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        write_bytes_atomic(target, data)
    return str(target)


def _picture(record: dict[str, Any], limits: Limits, side: int, fmt: str) -> bytes:
    """The item's image (a PDF page rendered) fitted in ``side`` pixels, encoded as ``fmt``."""
    path = record["path"]
    try:
        img = _pdf_page(path, _page(record), side) if Path(path).suffix.lower() == ".pdf" else \
            load_image(path, max_pixels=limits.max_image_pixels)
    except ValueError as exc:
        raise RequestRefused(404, f"this item's image cannot be shown: {getattr(exc, 'reason', exc)}") from None
    img.thumbnail((side, side))
    out = io.BytesIO()
    img.save(out, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return out.getvalue()


def _pdf_page(path: str, number: int, side: int):
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise ValueError("PDF pages need pypdfium2") from None
    try:
        doc = pdfium.PdfDocument(path)
        try:
            page = doc[number - 1]
            return page.render(scale=side / max(*page.get_size(), 1)).to_pil().convert("RGB")
        finally:
            doc.close()
    except Exception as exc:  # noqa: BLE001 - pdfium raises its own error types
        raise ValueError(f"PDF page cannot be rendered: {exc}") from None
