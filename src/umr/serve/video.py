"""Video in ``umr serve``: video queries, and video segments on the search page (issue 25).

A query video comes as ``video`` — a ``data:video/...;base64,`` URI in JSON, or a file uploaded
in a form — under the same policy as images: the body size limit, the per-frame pixel limit
(``Limits.max_image_pixels``, read from the stream before anything else is decoded), never a
path or a ``file://`` URL, an http(s) URL fetched only from an allow-listed host. An upload is
an image when it decodes as one; otherwise it is read as a video, and one that is neither is
refused with the image's reason.

A video result carries ``start`` / ``end`` (seconds), a ``poster_url`` (the frame at its start,
as a JPEG thumbnail) and a ``video_url`` (the file, served with HTTP range requests so that a
player seeks to the segment); the page plays the segment from its start and stops at its end.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ..core.items import ItemError
from ..core.results import Result
from ..core.video import probe_video, read_frames
from .security import Limits, RequestRefused, Security, check_image_bytes, data_uri_bytes, fetch_allowed
from .server import Server

POSTER_PX = 384


def check_video_bytes(data: bytes, limits: Limits) -> bytes:
    """The bytes, if they are a readable video whose frames are within the pixel limit."""
    if len(data) > limits.max_body_bytes:
        raise RequestRefused(413, f"video is {len(data):,} bytes, over the limit of {limits.max_body_bytes:,}")
    try:
        info = probe_video(data)
    except ItemError as exc:
        raise RequestRefused(400, exc.reason) from None
    if info.width * info.height > limits.max_image_pixels:
        raise RequestRefused(413, f"video frames of {info.width}x{info.height} pixels are over the limit of "
                                  f"{limits.max_image_pixels:,}")
    return data


def video_from_url(url: str, limits: Limits, security: Security) -> bytes:
    """A query video given as a ``data:`` URI, or an http(s) URL on an allow-listed host."""
    fetched = fetch_allowed(url, limits, security, "video")
    return check_video_bytes(fetched if fetched is not None else data_uri_bytes(url, limits, "video"), limits)


def image_or_video_upload(data: bytes, limits: Limits) -> tuple[bytes | None, bytes | None]:
    """``(image, None)`` or ``(None, video)`` for an uploaded file: an image when it reads as one."""
    try:
        return check_image_bytes(data, limits), None
    except RequestRefused as not_image:
        if not_image.status != 400:
            raise
        try:
            return None, check_video_bytes(data, limits)
        except RequestRefused as not_video:
            if not_video.status == 413:
                raise
            raise not_image from None


def video_fields(result: Result) -> dict[str, Any]:
    """What the page needs of a video result (nothing for other results)."""
    if result.start is None:
        return {}
    quoted = quote(result.id, safe="")
    return {"start": result.start, "end": result.end, "poster_url": "/v1/posters/" + quoted,
            "video_url": "/v1/videos/" + quoted}


def videos_router(server: Server) -> APIRouter:
    """``GET /v1/posters/{id}`` and ``GET /v1/videos/{id}`` for the video items of the index."""
    router = APIRouter()

    async def video_record(item_id: str) -> dict[str, Any]:
        index = server.need_index()
        record = (await server.in_index(index.get, [item_id]))[0]
        if record is None:
            raise RequestRefused(404, "no such item in the index")
        if not str(record.get("modality", "")).startswith("video") or not record.get("path") \
                or not Path(record["path"]).is_file():
            raise RequestRefused(404, "this item has no video")
        return record

    @router.get("/v1/posters/{item_id:path}")
    async def poster(item_id: str):
        record = await video_record(item_id)
        data = await asyncio.to_thread(_poster, record)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @router.get("/v1/videos/{item_id:path}")
    async def video(item_id: str):
        record = await video_record(item_id)
        return FileResponse(record["path"], headers={"Cache-Control": "private, max-age=300"})

    return router


def _poster(record: dict[str, Any]) -> bytes:
    """The frame at the segment's start, fitted in :data:`POSTER_PX` pixels, as a JPEG."""
    from PIL import Image

    try:
        info = probe_video(record["path"], item_id=record["id"])
        start = float((record.get("meta") or {}).get("start") or 0.0)
        index = min(int(round(start * info.fps)), info.frames - 1)
        frame = read_frames(record["path"], [index], info=info, item_id=record["id"])[0]
    except ItemError as exc:
        raise RequestRefused(404, f"no poster: {exc.reason}") from None
    image = Image.fromarray(frame)
    image.thumbnail((POSTER_PX, POSTER_PX))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()
