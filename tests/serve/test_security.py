"""Security defaults: each attack refused with the right status, and nothing outside the index read."""

from __future__ import annotations

import struct
import sys
import zlib

import pytest

from umr.serve import Limits, Security, create_app

from .conftest import data_uri, png_bytes

from starlette.testclient import TestClient  # noqa: E402


class Audit:
    """Files opened and sockets connected while ``active`` (a CPython audit hook; hooks stay installed)."""

    opened: list[str] = []
    connected: list = []
    active = False

    @classmethod
    def hook(cls, event, args):
        if not cls.active:
            return
        if event == "open" and args and isinstance(args[0], (str, bytes)):
            cls.opened.append(str(args[0]))
        elif event == "socket.connect":
            cls.connected.append(args[1])


sys.addaudithook(Audit.hook)


@pytest.fixture
def audit():
    Audit.opened.clear()
    Audit.connected.clear()
    Audit.active = True
    yield Audit
    Audit.active = False


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(png_bytes((1, 2, 3)))
    return path


@pytest.fixture
def client(photo_index):
    with TestClient(create_app(photo_index.model, index=photo_index, limits=Limits(max_body_bytes=200_000, max_items=8)),
                    raise_server_exceptions=False) as c:
        yield c


def never_opened(audit, secret):
    assert not [p for p in audit.opened if "secret" in p or p.startswith("/etc")]


def test_path_traversal_in_ids_and_static_paths(client, secret, audit):
    rel = "../" * 12 + str(secret).lstrip("/")
    for url in [f"/v1/thumbnails/{rel}", f"/v1/originals/{rel}", "/v1/thumbnails/..%2F..%2F..%2Fetc%2Fpasswd",
                "/v1/originals/%2Fetc%2Fpasswd", f"/v1/thumbnails/{secret}", "/v1/originals/notes/apples"]:
        r = client.get(url)
        assert r.status_code == 404, url
        assert "root:" not in r.text
    assert client.delete("/v1/items/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert client.get("/v1/thumbnails/photos/red.png").status_code == 200  # an indexed item is served
    never_opened(audit, secret)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "../../etc/passwd", "SECRET",
                                 "http://127.0.0.1:9/x.png", "https://example.com/x.png"])
def test_image_paths_and_urls_refused_in_every_image_field(client, secret, audit, url):
    url = url.replace("SECRET", str(secret))
    calls = [("/v1/embeddings", {"input": [url], "modality": "image"}),
             ("/v1/embeddings", {"messages": [{"role": "user", "content": [
                 {"type": "image_url", "image_url": {"url": url}}]}]}),
             ("/v1/search", {"image": url}),
             ("/v1/items", {"items": [{"id": "x", "image": url}]})]
    for path, body in calls:
        r = client.post(path, json=body)
        assert r.status_code == 400, (path, r.text)
        assert "Traceback" not in r.text
    assert audit.connected == []
    never_opened(audit, secret)


def test_item_ids_never_become_paths(client, photo_index, tmp_path):
    session_root = tmp_path.parent  # this run's temporary folders (not other pytest runs')
    before = set(session_root.rglob("*"))
    r = client.post("/v1/items", json={"items": [{"id": "../../../evil", "image": data_uri(png_bytes((9, 9, 9)))}]})
    assert r.status_code == 200, r.text
    stored = photo_index.get(["../../../evil"])[0]["path"]
    assert stored.startswith(str(photo_index.folder / "uploads") + "/")
    assert "evil" not in stored
    written = set(session_root.rglob("*")) - before
    assert written and all(p.is_relative_to(photo_index.folder) for p in written)  # only inside the index
    assert client.delete("/v1/items/../../../evil").status_code in (200, 404)  # clients normalise the path
    photo_index.delete(["../../../evil"])


def test_oversized_bodies_and_too_many_items(client):
    big = client.post("/v1/embeddings", json={"input": "x" * 300_000})
    assert big.status_code == 413

    def chunks():  # no content-length: counted as it streams
        for _ in range(50):
            yield b"x" * 10_000
    assert client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}).status_code == 413
    assert client.post("/v1/embeddings", json={"input": ["a"] * 9}).status_code == 413
    assert client.post("/v1/items", json={"items": [{"id": str(i), "text": "a"} for i in range(9)]}).status_code == 413
    assert client.post("/v1/search", json={"text": "a", "k": 10_000}).status_code == 413
    assert client.post("/v1/embeddings", json={"input": ["a"] * 8}).status_code == 200


def bomb_png(width=40_000, height=40_000) -> bytes:
    """A small PNG whose header claims ``width x height`` pixels (decoding it would need gigabytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("size", [(5000, 5000), (40_000, 40_000)])
def test_decompression_bomb_refused_before_decoding(client, size):
    uri = data_uri(bomb_png(*size))
    for path, body in [("/v1/embeddings", {"input": [uri], "modality": "image"}), ("/v1/search", {"image": uri}),
                       ("/v1/items", {"items": [{"id": "bomb", "image": uri}]})]:
        r = client.post(path, json=body)
        assert r.status_code == 413, (path, r.text)
    r = client.post("/v1/search", files={"image": ("bomb.png", bomb_png(*size), "image/png")})
    assert r.status_code == 413


def test_token_required_and_compared(photo_index):
    app = create_app(photo_index.model, index=photo_index, security=Security(token="s3cret-token"))
    with TestClient(app) as c:
        body = {"input": "hello"}
        assert c.post("/v1/embeddings", json=body).status_code == 401
        assert c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert c.post("/v1/embeddings", json=body, headers={"Authorization": "s3cret-token"}).status_code == 401
        assert c.get("/v1/stats").status_code == 401
        assert c.get("/v1/thumbnails/photos/red.png").status_code == 401
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        ok = c.post("/v1/embeddings", json=body, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200


def test_no_start_beyond_loopback_without_token(capsys):
    from umr.cli import main

    assert main(["serve", "--host", "0.0.0.0", "--model", "minilm"]) == 2
    assert "--token" in capsys.readouterr().err
    assert main(["serve", "--host", "192.168.1.10", "--model", "minilm", "--token", "short"]) == 2


def test_errors_carry_no_stack_trace(client, photo_index, monkeypatch):
    def broken():
        raise RuntimeError("secret internals /home/user/.cache")
    monkeypatch.setattr(photo_index, "modality_counts", broken)
    r = client.get("/v1/stats")
    assert r.status_code == 500
    assert "Traceback" not in r.text and "secret internals" not in r.text


def test_cors_off_unless_configured(photo_index):
    headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    with TestClient(create_app(photo_index.model, index=photo_index)) as c:
        assert "access-control-allow-origin" not in c.options("/v1/embeddings", headers=headers).headers
    app = create_app(photo_index.model, index=photo_index, security=Security(cors_origins=("https://ok.example",)))
    with TestClient(app) as c:
        r = c.options("/v1/embeddings", headers={**headers, "Origin": "https://ok.example"})
        assert r.headers.get("access-control-allow-origin") == "https://ok.example"
