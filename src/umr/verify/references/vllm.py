"""A vLLM server the user runs, as the reference (``umr verify --reference vllm``).

Embedders go through vLLM's OpenAI-compatible ``POST /v1/embeddings``: a text probe as an
``input`` string, an image or fused probe as the chat-style request vLLM documents for
multimodal embedding models (``messages`` with one user turn of ``image_url`` and ``text``
parts). Rerankers go through ``POST /v1/rerank`` (vLLM's, Jina's and Cohere's shape: a query,
documents, ``results[i].relevance_score``), an image side as vLLM's multimodal ``{"content":
[image_url part]}``. A query's instruction travels in the ``input_type`` / ``instruction`` fields
umr's and infinity's servers read; vLLM ignores fields it does not know. Every probe is one
request: one the server refuses is that probe's error.
"""

from __future__ import annotations

import base64
import io
import json
import mimetypes
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ...core.items import Item
from .base import Reference
from .rerank_base import RerankReference


class ServerUnreachable(ValueError):
    """The server cannot be asked at all (wrong URL, not running, no model listed)."""


class ServerRefused(RuntimeError):
    """The server answered one request with an error status."""


class VllmServer:
    """The server's base URL (``http://host:8000``, with or without ``/v1``) and the model asked for
    (default: the first one ``GET /v1/models`` lists)."""

    def __init__(self, url: str, model: str | None = None, *, timeout: float = 300.0):
        self.url = url.rstrip("/").removesuffix("/v1")
        self.timeout = timeout
        try:
            listed = [entry["id"] for entry in self.request("GET", "/v1/models").get("data", [])]
        except (ServerRefused, OSError, ValueError, KeyError, TypeError) as exc:
            raise ServerUnreachable(f"cannot list the models of the server at {self.url}: {exc}") from None
        if model is None and not listed:
            raise ServerUnreachable(f"the server at {self.url} lists no model")
        self.model = model or listed[0]
        try:
            self.version = str(self.request("GET", "/version").get("version"))
        except (ServerRefused, OSError, ValueError):
            self.version = None  # not a vLLM server (umr serve, infinity): no version route

    def describe(self, route: str) -> str:
        version = f"vLLM {self.version}" if self.version else "an OpenAI-compatible server"
        return f"{version} at {self.url}{route}, model {self.model!r}"

    def request(self, method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + route, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ServerRefused(f"HTTP {exc.code}: {_message(exc.read())}") from None


def _message(payload: bytes) -> str:
    """The error message of vLLM's, OpenAI's or FastAPI's error body, else the body's first line."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload.decode(errors="replace").strip().splitlines()[0] if payload.strip() else "(empty body)"
    error = body.get("error", body) if isinstance(body, dict) else body
    message = error.get("message", error.get("detail", error)) if isinstance(error, dict) else error
    return message if isinstance(message, str) else json.dumps(message)[:300]


def image_url(image) -> str:
    """An item's image (a path, bytes or a PIL image) as a base64 ``data:`` URI of its own bytes."""
    if isinstance(image, Image.Image):
        out = io.BytesIO()
        image.save(out, format="PNG")
        data, mime = out.getvalue(), "image/png"
    elif isinstance(image, bytes):
        data, mime = image, Image.MIME.get(Image.open(io.BytesIO(image)).format)
    else:
        data, mime = Path(image).read_bytes(), mimetypes.guess_type(str(image))[0]
    mime = mime or "image/png"  # the servers sniff the bytes; the type only has to be an image's
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _image_part(image) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": image_url(image)}}


def _query_fields(item: Item) -> dict[str, Any]:
    return {"input_type": "query", "instruction": item.instruction} if item.is_query else {}


class VllmEmbeddingReference(Reference):
    """Each probe's vector from the server's ``/v1/embeddings``, L2-normalised."""

    def __init__(self, server: VllmServer):
        self.server = server
        self.description = server.describe("/v1/embeddings")

    def embed(self, item: Item) -> np.ndarray:
        body: dict[str, Any] = {"model": self.server.model, "encoding_format": "float", **_query_fields(item)}
        if item.image is None:
            body["input"] = [item.text or ""]
        else:
            content = [_image_part(item.image)]
            if item.text is not None:
                content.append({"type": "text", "text": item.text})
            body["messages"] = [{"role": "user", "content": content}]
        data = self.server.request("POST", "/v1/embeddings", body).get("data") or []
        if len(data) != 1:
            raise ServerRefused(f"expected one embedding, the server returned {len(data)}")
        vector = np.asarray(data[0]["embedding"], dtype=np.float32)
        return vector / np.linalg.norm(vector)


class VllmRerankReference(RerankReference):
    """Each pair's ``relevance_score`` from the server's ``/v1/rerank`` (one document per request)."""

    def __init__(self, server: VllmServer):
        self.server = server
        self.description = server.describe("/v1/rerank") + " (query instructions are not part of this API)"

    @staticmethod
    def side(item: Item) -> str | dict[str, Any]:
        if item.image is not None and item.text is not None:
            raise ValueError("the rerank API takes a text or an image per side, not both")
        return item.text if item.image is None else {"content": [_image_part(item.image)]}

    def score(self, query: Item, document: Item) -> float:
        document_side = self.side(document)
        body = {"model": self.server.model, "query": self.side(query),
                "documents": [document_side] if isinstance(document_side, str) else document_side}
        results = self.server.request("POST", "/v1/rerank", body).get("results") or []
        if len(results) != 1:
            raise ServerRefused(f"expected one result, the server returned {len(results)}")
        return float(results[0]["relevance_score"])
