"""The items' pictures: ``GET /v1/thumbnails/{id}`` and ``GET /v1/originals/{id}`` (image files,
and PDF pages rendered)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..core.images import load_image
from .security import Limits, RequestRefused
from .server import Server

THUMBNAIL_PX = 384
#: longest side of a PDF page shown large
PAGE_PX = 1400


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


def pictures_router(server: Server) -> APIRouter:
    """The thumbnail and the original picture of an item of the server's index."""
    router = APIRouter()
    limits = server.limits

    async def image_record(item_id: str) -> dict[str, Any]:
        index = server.need_index()
        record = (await server.in_index(index.get, [item_id]))[0]
        if record is None:
            raise RequestRefused(404, "no such item in the index")
        if thumbnail_url(record) is None or not Path(record["path"]).is_file():
            raise RequestRefused(404, "this item has no image")
        return record

    @router.get("/v1/thumbnails/{item_id:path}")
    async def thumbnail(item_id: str):
        record = await image_record(item_id)
        data = await asyncio.to_thread(_picture, record, limits, THUMBNAIL_PX, "JPEG")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @router.get("/v1/originals/{item_id:path}")
    async def original(item_id: str):
        record = await image_record(item_id)
        if Path(record["path"]).suffix.lower() == ".pdf":  # the page, rendered
            data = await asyncio.to_thread(_picture, record, limits, PAGE_PX, "PNG")
            return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
        return FileResponse(record["path"], headers={"Cache-Control": "private, max-age=300"})

    return router


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
