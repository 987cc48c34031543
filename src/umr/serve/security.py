"""What a request may ask of the server: bind rules, the bearer token, size limits, image sources.

A server that opens paths or fetches URLs on a client's behalf leaks the machine it runs on, so
images arrive only as uploaded bytes or ``data:`` URIs (or from hosts an operator allow-listed),
and every size is bounded before work is done on it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

from ..core.images import image_size
from ..core.items import ItemError


class RequestRefused(Exception):
    """A request the server will not serve: ``status`` is its HTTP status, the message its reason."""

    def __init__(self, status: int, message: str):
        self.status = status
        super().__init__(message)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request; the defaults suit a single-user server on a laptop."""

    #: whole request body (JSON or multipart), bytes
    max_body_bytes: int = 16 * 1024 * 1024
    #: inputs in one /v1/embeddings, /v1/items or /v1/rerank request
    max_items: int = 128
    #: characters of one text (query, document, instruction)
    max_text_chars: int = 20_000
    #: pixels of one image, read from its header before anything is decoded
    max_image_pixels: int = 4096 * 4096
    #: results of one search
    max_k: int = 200


@dataclass(frozen=True)
class Security:
    """Who may call the server and where images may come from."""

    token: str | None = None
    #: hosts whose http(s) image URLs the server may fetch; empty = no URL is ever fetched
    image_hosts: frozenset[str] = field(default_factory=frozenset)
    #: origins allowed by CORS; empty = CORS off (same-origin only)
    cors_origins: tuple[str, ...] = ()

    def authorized(self, header: str | None) -> bool:
        """Whether an ``Authorization`` header carries the token (compared in constant time)."""
        if self.token is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token: anyone on the network could call it."""
    if not is_loopback(host) and not token:
        raise ValueError(f"--host {host} is reachable from other machines: give --token TOKEN (or set "
                         f"UMR_SERVE_TOKEN), or bind to 127.0.0.1")
    if token is not None and len(token) < 8:
        raise ValueError("the token is too short: use at least 8 characters (e.g. `openssl rand -hex 16`)")


def check_text(text: str | None, limits: Limits, what: str = "text") -> str | None:
    if text is not None and len(text) > limits.max_text_chars:
        raise RequestRefused(413, f"{what} is {len(text):,} characters, over the limit of {limits.max_text_chars:,}")
    return text


def check_count(n: int, limits: Limits, what: str = "inputs") -> None:
    if n > limits.max_items:
        raise RequestRefused(413, f"{n} {what} in one request, over the limit of {limits.max_items}")
    if n == 0:
        raise RequestRefused(400, f"no {what} given")


def check_image_bytes(data: bytes, limits: Limits) -> bytes:
    """The bytes, if they are an image within the pixel limit (only the header is read)."""
    if len(data) > limits.max_body_bytes:
        raise RequestRefused(413, f"image is {len(data):,} bytes, over the limit of {limits.max_body_bytes:,}")
    try:
        image_size(data, max_pixels=limits.max_image_pixels)
    except ItemError as exc:
        status = 413 if "over the limit" in exc.reason or "decompression bomb" in exc.reason else 400
        raise RequestRefused(status, exc.reason) from None
    return data


def image_from_url(url: str, limits: Limits, security: Security) -> bytes:
    """An image given as a ``data:`` URI, or as an http(s) URL on an allow-listed host.

    Paths and ``file://`` URLs are never opened; other URLs are never fetched.
    """
    fetched = fetch_allowed(url, limits, security, "image")
    return check_image_bytes(fetched if fetched is not None else data_uri_bytes(url, limits, "image"), limits)


def fetch_allowed(url: str, limits: Limits, security: Security, what: str) -> bytes | None:
    """The bytes at an http(s) URL on an allow-listed host; None for a ``data:`` URI (the caller
    decodes it); any other URL, path or non-string is refused, naming ``what`` (image, video)."""
    if not isinstance(url, str):
        raise RequestRefused(400, f"{_article(what)} {what} must be a data: URI string")
    if url.startswith("data:"):
        return None
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in ("http", "https") and parsed.hostname and parsed.hostname.lower() in security.image_hosts:
        return _fetch(url, limits, what)
    if parsed.scheme in ("http", "https"):
        raise RequestRefused(400, f"{what} URLs are not fetched (host not allow-listed): send the {what} as a "
                                  f"data: URI or upload it")
    raise RequestRefused(400, f"{what}s are accepted only as uploads or data: URIs, never as paths or file:// URLs")


def data_uri_bytes(url: str, limits: Limits, what: str) -> bytes:
    """The bytes of a base64 ``data:`` URI within the body size limit."""
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        example = "data:image/png;base64,..." if what == "image" else f"data:{what}/mp4;base64,..."
        raise RequestRefused(400, f"{_article(what)} {what} data URI must be base64 ({example})")
    if len(payload) > limits.max_body_bytes * 4 // 3 + 4:
        raise RequestRefused(413, f"{what} data URI is over the body size limit")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(400, f"{what} data URI is not valid base64") from None


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a redirect could lead off the allow-list
        return None


def _fetch(url: str, limits: Limits, what: str = "image") -> bytes:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=10) as response:
            data = response.read(limits.max_body_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise RequestRefused(400, f"{what} URL could not be fetched: {getattr(exc, 'reason', exc)}") from None
    if len(data) > limits.max_body_bytes:
        raise RequestRefused(413, f"{what} at the URL is over the body size limit")
    return data
