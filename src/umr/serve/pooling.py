"""``POST /pooling``: vLLM's pooling API, the standard shape for per-token vectors.

vLLM serves a late-interaction model's token vectors from ``/pooling`` with ``task:
"token_embed"``: each input's ``data`` is a list of per-token vectors. umr answers the same shape
for a :class:`~umr.models.multivector.MultiVectorEmbedder` (``token_embed``) and, for a
single-vector model, ``task: "embed"`` (one vector per input, as ``/v1/embeddings``). Inputs are
``/v1/embeddings``' (strings, vLLM's chat ``messages`` with images, infinity's ``modality``), with
umr's ``input_type`` (default: documents) and ``instruction`` for queries.
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter

from .embeddings import EmbeddingRequest, check_model_name, embedding_items, json_response
from .security import RequestRefused
from .server import Server, embed_or_refuse


class PoolingRequest(EmbeddingRequest):
    """vLLM's ``/pooling`` body (``input`` or ``messages``, ``task``, ``encoding_format``)."""

    task: Literal["embed", "token_embed"] | None = None


def pooling_router(server: Server) -> APIRouter:
    router = APIRouter(tags=["vllm"])
    model, limits, security = server.model, server.limits, server.security
    own_task = "token_embed" if model.multi_vector else "embed"

    @router.post("/pooling")
    async def pooling(body: PoolingRequest):
        check_model_name(model, body.model)
        if body.task not in (None, own_task):
            kind = "late-interaction (multi-vector)" if model.multi_vector else "single-vector"
            raise RequestRefused(400, f"task {body.task!r}: {model.name} is a {kind} model; it serves "
                                      f"task {own_task!r}")
        if body.dimensions is not None:
            raise RequestRefused(400, "dimensions is not supported by /pooling: use /v1/embeddings")
        items = embedding_items(body, limits, security)
        name = "message" if body.messages is not None else "input"
        embedded = await embed_or_refuse(server, items, [f"{name} {i}" for i in range(len(items))])
        data = []
        for i, vectors in enumerate(embedded.result.vectors):
            vectors = np.ascontiguousarray(vectors, dtype="<f4")  # as orjson writes arrays
            value = base64.b64encode(vectors.tobytes()).decode("ascii") if body.encoding_format == "base64" \
                else vectors
            data.append({"index": i, "object": "pooling", "data": value})
        return json_response({"id": f"pool-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
                              "model": str(model.name), "data": data,
                              "usage": {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens,
                                        "completion_tokens": 0}})

    return router
