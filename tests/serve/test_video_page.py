"""The search page's video segments in headless Chromium: a poster per segment in the grid, and in
the detail view a <video> that seeks to the segment's start, plays it and stops at its end."""

from __future__ import annotations

from pathlib import Path

import pytest

import umr
from umr.index import Index
from umr.serve import create_app
from umr.testing import write_test_clip, write_tiny_qwen3vl

from .conftest import CHROMIUM, LiveServer, searched_page

pytest.importorskip("av")
sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)

#: a page may start playing without a click here, as it may after the click that opens the detail view
AUTOPLAY = ["--autoplay-policy=no-user-gesture-required"]


@pytest.fixture(scope="module")
def video_index(tmp_path_factory):
    """A tiny Qwen3-VL index of a 30 s clip in 10 s segments, reopened as `umr serve` opens it
    (writable; its stores are first used in the server's threads)."""
    folder = tmp_path_factory.mktemp("video-page")
    model = umr.load_model(write_tiny_qwen3vl(folder / "tiny", seed=0), fps=0.25, max_frames=4)
    clips = folder / "clips"
    clips.mkdir()
    write_test_clip(clips / "talk.mp4", 30, rate=10, width=128, height=96, scene_seconds=10)
    with Index.create(folder / "idx", model) as index:
        index.index_corpus(clips, segment_seconds=10)
    index = Index.open(folder / "idx", model=model, writable=True)
    yield index
    index.close()  # the app closed it already; closing again is a no-op


@pytest.mark.slow
def test_page_shows_posters_and_plays_a_segment_from_its_start(video_index, tmp_path):
    with LiveServer(create_app(video_index.model, index=video_index)) as live, sync_api.sync_playwright() as p:
        browser, page, errors = searched_page(p, live.url, "a talk on stage", args=AUTOPLAY)
        ids = page.locator(".card .id").all_inner_texts()
        assert sorted(ids) == ["clips/talk.mp4#t=0,10", "clips/talk.mp4#t=10,20", "clips/talk.mp4#t=20,30"]
        # each segment's card shows its poster frame and its span
        page.wait_for_function("[...document.querySelectorAll('.card img')].filter(i => i.naturalWidth > 0).length === 3")
        assert "0:10-0:20" in page.inner_text("#results")

        page.locator(".card").nth(ids.index("clips/talk.mp4#t=10,20")).click()
        page.wait_for_selector("#detail[open] .detail-media video")
        # the player seeks to the segment's start (10 s) and plays on from there
        page.wait_for_function("(() => { const v = document.querySelector('#detail video');"
                               " return v.readyState >= 1 && !v.paused && v.currentTime > 10.2; })()", timeout=15000)
        first = page.evaluate("document.querySelector('#detail video').currentTime")
        assert 10 < first < 20
        assert page.evaluate("document.querySelector('#detail video').duration") == pytest.approx(30, abs=0.2)
        assert page.evaluate("document.querySelector('#detail video').poster").startswith("blob:")
        # ... and stops at its end (20 s)
        page.evaluate("document.querySelector('#detail video').currentTime = 19.5")
        page.wait_for_function("(() => { const v = document.querySelector('#detail video');"
                               " return v.paused && v.currentTime >= 20; })()", timeout=15000)
        assert page.evaluate("document.querySelector('#detail video').currentTime") < 21
        shot = tmp_path / "serve-page-video.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert errors == []
    assert shot.stat().st_size > 5000
