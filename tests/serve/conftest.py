"""Fixtures for the server tests: a live uvicorn on a free loopback port, and small models/indexes."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")


class LiveServer:
    """``app`` served by uvicorn in a thread on 127.0.0.1; ``url`` is its base URL."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="session")
def minilm():
    import umr

    return umr.load_model("minilm")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    import umr
    from umr.testing import write_tiny_clip

    return umr.load_model(write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip"))


def png_bytes(color=(200, 30, 30), size=(32, 32)) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    import base64

    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, tiny_clip):
    """A tiny-CLIP index of three coloured photos and two texts, the photos on disk."""
    from umr import Item
    from umr.index import Index

    root = tmp_path_factory.mktemp("corpus")
    items = []
    for name, color in (("red", (220, 20, 20)), ("green", (20, 200, 40)), ("blue", (30, 40, 220))):
        path = root / f"{name}.png"
        path.write_bytes(png_bytes(color, (64, 48)))
        items.append(Item.candidate(image=str(path), id=f"photos/{name}.png", colour=name))
    items.append(Item.candidate(text="a note about red apples", id="notes/apples", colour="red"))
    items.append(Item.candidate(text="the sea is deep and blue", id="notes/sea", colour="blue"))
    folder = tmp_path_factory.mktemp("idx") / "index"
    with Index.create(folder, tiny_clip) as index:
        index.add(items)
    return folder


@pytest.fixture
def photo_index(built_index, tiny_clip, tmp_path):
    """A copy of the built index for one test, opened as `umr serve` opens it (writable; its digest
    store is first used in the server's model thread)."""
    import shutil

    from umr.index import Index

    folder = tmp_path / "index"
    shutil.copytree(built_index, folder)
    index = Index.open(folder, model=tiny_clip, writable=True)
    yield index
    index.close()  # the app closed it already when it wrote to it; closing again is a no-op


@pytest.fixture(scope="session")
def late_index(tmp_path_factory):
    """A tiny ColQwen2.5 late-interaction index of page images (odd sizes) and notes, and a query image."""
    import numpy as np
    from PIL import Image

    from umr.cli import main
    from umr.testing import write_tiny_colqwen

    root = tmp_path_factory.mktemp("late")
    tiny = write_tiny_colqwen(root / "colqwen", "2.5", seed=0)
    corpus = root / "pages"
    corpus.mkdir()
    rng = np.random.RandomState(0)
    for i, (w, h) in enumerate([(123, 77), (64, 96), (97, 61), (150, 100)]):
        Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(corpus / f"page{i}.png")
    for i, text in enumerate(["a dog runs in the park", "a dog sleeps on the sofa", "dogs play in the snow",
                              "a cat on the roof", "a red car in the street", "a dog and a cat in the park"]):
        (corpus / f"note{i}.txt").write_text(text)
    query_image = root / "query.png"
    Image.fromarray(rng.randint(0, 256, (50, 70, 3), dtype=np.uint8)).save(query_image)
    assert main(["index", str(corpus), "--index", str(root / "ix"), "--model", str(tiny), "--no-progress"]) == 0
    return root / "ix", query_image, tiny


#: the Debian package's Chromium, driven by Playwright (the browser tests skip without it)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def searched_page(playwright, url: str, query: str, *, args=(), viewport=(1200, 800)):
    """Headless Chromium on the search page at ``url``, ``query`` searched and its first card shown:
    ``(browser, page, errors)``, ``errors`` collecting the page's uncaught exceptions."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(args))
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('stats').textContent.includes('items')")
    page.fill("#q", query)
    page.keyboard.press("Enter")
    page.wait_for_selector(".card")
    return browser, page, errors
