"""Writing to the served index: ``POST /v1/items`` (JSON, or a form with an image file) and
``DELETE /v1/items/{id}``."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from ..core.atomic import write_bytes_atomic
from ..core.items import Item
from .forms import body_doc, form_or_json
from .security import RequestRefused, check_count, check_image_bytes, check_text, image_from_url
from .server import Server, check_items, naming

#: where images added through /v1/items are kept, inside the index folder
UPLOADS = "uploads"


class NewItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=512)
    text: str | None = None
    image: str | None = Field(default=None, description="a data: URI")
    metadata: dict[str, Any] = Field(default_factory=dict)


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[NewItem]


def items_router(server: Server) -> APIRouter:
    """Adding items to the server's index and deleting them."""
    router = APIRouter()
    limits, security = server.limits, server.security

    @router.post("/v1/items", openapi_extra=body_doc(ItemsRequest, "JSON {items: [...]} (images as data: URIs), "
                                                                   "or a form with id, text, metadata and an image file"))
    async def add_items(request: Request):
        index = server.need_index()
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            one, upload = await form_or_json(request, NewItem)
            wanted = [(one, check_image_bytes(upload, limits) if upload else None)]
        else:
            body, _ = await form_or_json(request, ItemsRequest)
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

    @router.delete("/v1/items/{item_id:path}")
    async def delete_item(item_id: str):
        index = server.need_index()
        if not await server.in_index(index.delete, [item_id]):
            raise RequestRefused(404, "no such item in the index")
        return {"deleted": item_id}

    return router


def _keep_upload(folder: Path, data: bytes) -> str:
    """Store an uploaded image in the index folder under its content hash (so results can show it)."""
    from PIL import Image

    fmt = (Image.open(io.BytesIO(data)).format or "png").lower()
    target = Path(folder) / UPLOADS / f"{hashlib.blake2b(data, digest_size=16).hexdigest()}.{fmt}"
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        write_bytes_atomic(target, data)
    return str(target)
