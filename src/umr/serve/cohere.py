"""Cohere's API as the official ``cohere`` client calls it (``base_url`` = the server's root):
``ClientV2``'s ``POST /v2/embed`` and ``POST /v2/rerank``, and ``Client``'s (v1) ``POST /v1/embed``
(v1's ``/v1/rerank`` is :mod:`umr.serve.rerank`'s, shared with Jina and TEI).

``/v2/embed`` takes ``texts``, ``images`` (data URIs) or v4-style ``inputs`` (``content`` parts of
text and ``image_url``, fused into one vector each) and answers each requested
``embedding_types`` (float, int8, uint8, binary, ubinary, base64) with umr's one codec
(:mod:`umr.core.quantize`, which the compact vector storage :mod:`umr.index.compact` uses too). int8/uint8 are Cohere-style symmetric codes,
``clip(rint(127 x / a))``, with ``a`` the largest value over built-in calibration inputs embedded
by the served model at the first int8 request (cached per output dimension): codes point the
same way as the floats and their dot products rank like them. ``/v1/embed`` is the same pipeline
under v1's narrower body (``texts`` or ``images``, no ``output_dimension``) and v1's two response
shapes: plain float lists without ``embedding_types``, an object by type with them.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from PIL import Image, ImageDraw
from pydantic import BaseModel, ConfigDict, Field

from ..core.items import Item
from ..core.quantize import EMBEDDING_TYPES, SymmetricInt8, embedding_types
from ..models.base import Embedder
from ..models.matryoshka import matryoshka_prefix
from .embeddings import check_model_name, json_response, truncate
from .rerank import rank_documents
from .security import RequestRefused, check_count, check_text, image_from_url
from .server import Server, check_items, embed_or_refuse, naming, one_vector_per_input

#: Cohere's input types: a query is embedded with the model's query instruction; the rest as
#: documents (classification and clustering compare items of one kind with each other, so every
#: item is embedded the same way, with no instruction)
INPUT_TYPES = ("search_query", "search_document", "classification", "clustering", "image")


class ImageUrl(BaseModel):
    url: str


class Content(BaseModel):
    """One part of a v4-style input: ``{"type": "text", "text": ...}`` or ``{"type": "image_url", ...}``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["text", "image_url"]
    text: str | None = None
    image_url: ImageUrl | None = None


class EmbedInput(BaseModel):
    content: list[Content]


class EmbedRequestV1(BaseModel):
    """Cohere's ``/v1/embed`` body (``cohere.Client.embed``); fields the client leaves out are not
    sent, so all are optional. ``embedding_types`` left out asks for v1's plain float lists."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    input_type: str = "search_document"
    texts: list[str] | None = None
    images: list[str] | None = None
    embedding_types: list[str] | None = None
    truncate: Literal["NONE", "START", "END"] = "END"


class EmbedRequest(EmbedRequestV1):
    """Cohere's ``/v2/embed`` body: v1's plus ``inputs``, ``output_dimension`` and ``max_tokens``,
    floats by default (``priority`` and the like are accepted and ignored)."""

    inputs: list[EmbedInput] | None = None
    embedding_types: list[str] = Field(default_factory=lambda: ["float"])
    output_dimension: int | None = Field(default=None, ge=1)
    max_tokens: int | None = Field(default=None, ge=1)


class RerankRequest(BaseModel):
    """Cohere's ``/v2/rerank`` body; documents as strings or ``{"text": ...}`` objects (older
    clients, vLLM); ``return_documents`` of older clients is honoured, other fields ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = Field(default=None, ge=1)
    max_tokens_per_doc: int | None = Field(default=None, ge=1)
    return_documents: bool = False


def cohere_router(server: Server) -> APIRouter:
    """Cohere's routes for ``server`` (``/v2/embed``, ``/v2/rerank``, ``/v1/embed``), to
    ``include_router`` in the app; both embed routes share one int8 calibration."""
    router = APIRouter(tags=["cohere"])
    scales = Int8Scales(server)

    @router.post("/v2/embed")
    async def embed(body: EmbedRequest):
        embeddings, meta = await embed_by_type(server, scales, body, api_version="2")
        payload: dict[str, Any] = {"id": str(uuid.uuid4()), "embeddings": embeddings, "meta": meta,
                                   "response_type": "embeddings_by_type"}
        if body.texts is not None:
            payload["texts"] = body.texts
        return json_response(payload)

    @router.post("/v1/embed")
    async def embed_v1(body: EmbedRequestV1):
        by_type = body.embedding_types is not None
        request = EmbedRequest.model_validate({**body.model_dump(), "embedding_types": body.embedding_types
                                               if by_type else ["float"]})
        embeddings, meta = await embed_by_type(server, scales, request, api_version="1")
        # v1 answers plain float lists unless embedding_types was given; ``texts`` is always there
        return json_response({"id": str(uuid.uuid4()), "texts": body.texts or [], "meta": meta,
                              "embeddings": embeddings if by_type else embeddings["float"],
                              "response_type": "embeddings_by_type" if by_type else "embeddings_floats"})

    @router.post("/v2/rerank")
    async def rerank_v2(body: RerankRequest):
        docs, order, scores = await rank_documents(server, body.query, body.documents, body.top_n,
                                                   body.max_tokens_per_doc)
        results = [{"index": i, "relevance_score": float(scores[i]),
                    **({"document": {"text": docs[i]}} if body.return_documents else {})} for i in order]
        return {"id": str(uuid.uuid4()), "results": results,
                "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}}

    return router


async def embed_by_type(server: Server, scales: Int8Scales, body: EmbedRequest,
                        api_version: str) -> tuple[dict[str, list], dict[str, Any]]:
    """The request's vectors in each of its ``embedding_types`` and Cohere's ``meta`` (billed
    units): the one embed pipeline behind ``/v1/embed`` and ``/v2/embed``."""
    model = server.model
    check_model_name(model, body.model)
    one_vector_per_input(model)
    if body.input_type not in INPUT_TYPES:
        raise RequestRefused(400, f"input_type {body.input_type!r} is not one of {', '.join(INPUT_TYPES)}")
    unknown = [t for t in body.embedding_types if t not in EMBEDDING_TYPES]
    if unknown or not body.embedding_types:
        raise RequestRefused(400, f"embedding_types: {', '.join(map(repr, unknown)) or 'none'} given; "
                                  f"choose from {', '.join(EMBEDDING_TYPES)}")
    items, names = await embed_items(server, body)
    embedded = await embed_or_refuse(server, items, names)
    vectors = truncate(embedded.result.vectors, body.output_dimension, model)
    codec = await scales.get(body.output_dimension) if {"int8", "uint8"} & set(body.embedding_types) else None
    meta = {"api_version": {"version": api_version},
            "billed_units": {"input_tokens": embedded.tokens, "images": sum(item.image is not None for item in items)}}
    return embedding_types(vectors, body.embedding_types, int8=codec), meta


async def embed_items(server: Server, body: EmbedRequest) -> tuple[list[Item], list[str]]:
    """The request's inputs as items and their names (``texts[2]``); exactly one of ``texts``,
    ``images`` and ``inputs``; a bad one refuses the request, naming it."""
    given = {name: values for name, values in (("texts", body.texts), ("images", body.images),
                                                ("inputs", body.inputs)) if values is not None}
    if len(given) != 1:
        raise RequestRefused(400, "give exactly one of texts, images and inputs")
    (kind, values), = given.items()
    limits, security = server.limits, server.security
    check_count(len(values), limits, kind)
    is_query = body.input_type == "search_query"
    texts: list[str | None] = []
    images: list[bytes | None] = []
    for i, value in enumerate(values):
        with naming(f"{kind}[{i}]"):
            if kind == "texts":
                texts.append(check_text(value, limits))
                images.append(None)
            elif kind == "images":
                texts.append(None)
                images.append(image_from_url(value, limits, security))
            else:
                words = [p.text for p in value.content if p.type == "text" and p.text]
                urls = [p.image_url.url for p in value.content if p.type == "image_url" and p.image_url is not None]
                if len(urls) > 1:
                    raise RequestRefused(400, "at most one image per input")
                texts.append(check_text("\n".join(words), limits) if words else None)
                images.append(image_from_url(urls[0], limits, security) if urls else None)
    texts = await server.batcher.run(cut_texts, server.model, texts, body.max_tokens, body.truncate)
    names = [f"{kind}[{i}]" for i in range(len(values))]
    items = [Item(text=text, image=image, is_query=is_query, id=str(i))
             for i, (text, image) in enumerate(zip(texts, images))]
    check_items(items, names)
    return items, names


def cut_texts(model: Embedder, texts: list[str | None], max_tokens: int | None,
              side: Literal["NONE", "START", "END"]) -> list[str | None]:
    """Each text within ``max_tokens`` of the model's tokens (or its text window): ``END`` keeps
    the start, ``START`` the end, ``NONE`` refuses a longer text (400 naming it). Runs in the
    model's thread (its tokenizer is shared state)."""
    window = max_tokens or model.text_window()
    if window is None or (side == "END" and max_tokens is None):  # the model cuts at its window itself
        return texts
    out = []
    for i, text in enumerate(texts):
        spans = model.token_spans(text) if text else []
        if len(spans) <= window:
            out.append(text)
        elif side == "NONE":
            raise RequestRefused(400, f"input {i}: {len(spans)} tokens exceed max_tokens={window} with "
                                      f"truncate=NONE; set truncate to END or START to allow truncation")
        elif side == "END":
            out.append(text[:spans[window - 1][1]])
        else:
            out.append(text[spans[-window][0]:])
    return out


class Int8Scales:
    """The API's int8 codec per output dimension: ``a`` = the largest value over the served
    model's vectors of built-in calibration inputs, embedded once (at the first int8 request)."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.vectors: np.ndarray | None = None
        self.codecs: dict[int | None, SymmetricInt8] = {}
        self.lock = asyncio.Lock()

    async def get(self, dim: int | None) -> SymmetricInt8:
        async with self.lock:
            if dim not in self.codecs:
                if self.vectors is None:
                    items = calibration_items(self.server.model.sees_images)
                    embedded = await embed_or_refuse(self.server, items, [f"calibration {i}" for i in
                                                                                   range(len(items))])
                    self.vectors = embedded.result.vectors
                self.codecs[dim] = SymmetricInt8.fit(matryoshka_prefix(self.server.model, self.vectors, dim))
            return self.codecs[dim]


SUBJECTS = ("the doctor", "a young teacher", "my neighbour", "the fisherman", "an engineer", "the city council",
            "a small startup", "the orchestra", "a famous chef", "the librarian", "a journalist", "the mayor",
            "an astronaut", "the gardener", "the architect", "a nurse")
VERBS = ("repaired", "discovered", "painted", "sold", "cooked", "studied", "photographed", "designed",
         "celebrated", "investigated", "built", "lost", "found", "delivered", "explained", "translated")
OBJECTS = ("a red bicycle", "an ancient map", "the broken violin", "a tiny satellite", "the wooden bridge",
           "a rare manuscript", "the solar panel", "a frozen cake", "the quiet garden", "a digital camera",
           "the medieval cathedral", "a heavy tractor", "the secret recipe", "an electric guitar",
           "the colourful kite", "a fragile fossil")
PLACES = ("in Paris", "near the harbour", "at the market", "in the mountains", "during the storm",
          "in the laboratory", "at the airport", "in a small village")


def calibration_items(with_images: bool) -> list[Item]:
    """Fixed, varied inputs for the int8 scale: 192 sentences as documents, 64 as queries, and
    (for a model that sees images) 16 coloured pictures with shapes."""
    sentences = [f"{SUBJECTS[i % 16].capitalize()} {VERBS[(i * 7) % 16]} {OBJECTS[(i * 5 + i // 16) % 16]} "
                 f"{PLACES[(i * 3) % 8]}." for i in range(256)]
    items = [Item.candidate(text=s) for s in sentences[:192]] + [Item.query(text=s) for s in sentences[192:]]
    if with_images:
        items += [Item.candidate(image=picture(i)) for i in range(16)]
    return items


def picture(seed: int) -> bytes:
    """A 64x64 PNG: a coloured background and a rectangle and an ellipse of other colours."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (64, 64), tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(image)
    x0, y0 = (int(v) for v in rng.integers(0, 32, 2))
    draw.rectangle((x0, y0, x0 + 24, y0 + 20), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    draw.ellipse((32 - x0 // 2, 30, 60, 60 - y0 // 2), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
