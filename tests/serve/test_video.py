"""Video in ``umr serve``: video queries (data URI or upload, the images' limits), and video results
with their times, a poster frame and the file served for the page's player (issue 25)."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from starlette.testclient import TestClient

import umr
from umr.index import Index
from umr.serve import create_app
from umr.serve.security import Limits
from umr.testing import write_test_clip, write_tiny_qwen3vl

from .conftest import data_uri, png_bytes

pytest.importorskip("av")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny Qwen3-VL index of a 90 s clip in 30 s segments, and a 12 s query clip."""
    folder = tmp_path_factory.mktemp("videos")
    model = umr.load_model(write_tiny_qwen3vl(folder / "tiny", seed=0), fps=0.25, max_frames=8)
    clips = folder / "clips"
    clips.mkdir()
    write_test_clip(clips / "talk.mp4", 90)
    with Index.create(folder / "idx", model) as index:
        index.index_corpus(clips, segment_seconds=30)
    return folder, model, write_test_clip(folder / "query.mp4", 12).read_bytes()


@contextmanager
def serving(built, limits: Limits | None = None):
    """A client of the app over the index, opened as `umr serve` opens it (the app closes it when it stops)."""
    folder, model, _ = built
    index = Index.open(folder / "idx", model=model, writable=True)
    try:
        with TestClient(create_app(model, index=index, limits=limits)) as client:
            yield client
    finally:
        index.close()


def test_video_query_by_data_uri_and_upload_finds_segments_with_times(built):
    folder, _, query = built
    with serving(built) as client:
        by_uri = client.post("/v1/search", json={"video": data_uri(query, "video/mp4"), "k": 3}).json()["results"]
        by_upload = client.post("/v1/search", data={"k": "3"},
                                files={"image": ("q.mp4", query, "video/mp4")}).json()["results"]
        assert [r["id"] for r in by_uri] == [r["id"] for r in by_upload]
        assert {r["id"] for r in by_uri} == {f"clips/talk.mp4#t={s},{s + 30}" for s in (0, 30, 60)}
        top = by_uri[0]
        start = int(top["id"].split("=")[1].split(",")[0])
        assert (top["start"], top["end"], top["modality"]) == (start, start + 30, "video")
        poster = client.get(top["poster_url"])
        assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
        whole = (folder / "clips" / "talk.mp4").read_bytes()
        part = client.get(top["video_url"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == whole[:100]  # a player can seek to the segment
        text = client.post("/v1/search", json={"text": "a talk", "k": 3}).json()["results"]
        assert all(r["start"] is not None and r["video_url"] for r in text)
        assert client.get("/v1/videos/no-such-item").status_code == 404


def test_video_queries_follow_the_image_policy(built, minilm, tmp_path):
    _, _, query = built
    with serving(built, Limits(max_body_bytes=len(query) - 1)) as client:
        r = client.post("/v1/search", json={"video": data_uri(query, "video/mp4")})
        assert r.status_code == 413, r.json()
    with serving(built, Limits(max_image_pixels=64 * 40)) as client:
        r = client.post("/v1/search", files={"image": ("q.mp4", query, "video/mp4")})
        assert r.status_code == 413 and "64x48 pixels are over the limit" in r.json()["error"]["message"]
    with serving(built) as client:
        for video, reason in (("/etc/passwd", "never as paths"), ("https://example.com/v.mp4", "not fetched"),
                              ("data:video/mp4;base64,AAAA", "not a readable video")):
            r = client.post("/v1/search", json={"video": video})
            assert r.status_code == 400 and reason in r.json()["error"]["message"], r.json()
        garbage = client.post("/v1/search", files={"image": ("q.bin", b"\x00" * 64, "application/octet-stream")})
        assert garbage.status_code == 400  # neither an image nor a video: the image's reason
        assert client.post("/v1/search", files={"image": ("q.png", png_bytes(), "image/png")}).status_code == 200
    with Index.create(tmp_path / "text", minilm) as text_index:
        text_index.add([umr.Item(text="a note", id="n")])
    text_index = Index.open(tmp_path / "text", model=minilm, writable=True)
    with TestClient(create_app(minilm, index=text_index)) as client:
        r = client.post("/v1/search", json={"video": data_uri(query, "video/mp4")})
        assert r.status_code == 400 and "cannot embed video" in r.json()["error"]["message"]
    text_index.close()
