"""The search page in headless Chromium: text search, a dropped image, thumbnails, the detail view."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from umr.serve import create_app

from .conftest import CHROMIUM, LiveServer, png_bytes, searched_page

sync_api = pytest.importorskip("playwright.sync_api")
if not Path(CHROMIUM).exists():
    pytest.skip("no /usr/bin/chromium (apt-get install -y chromium)", allow_module_level=True)

DROP = """async ([b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const file = new File([bytes], name, { type: "image/png" });
  const dt = new DataTransfer();
  dt.items.add(file);
  window.dispatchEvent(new DragEvent("dragenter", { dataTransfer: dt, bubbles: true }));
  window.dispatchEvent(new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
}"""


@pytest.mark.slow
def test_page_searches_by_text_and_dropped_image(photo_index, tmp_path):
    with LiveServer(create_app(photo_index.model, index=photo_index)) as live, sync_api.sync_playwright() as p:
        browser, page, errors = searched_page(p, live.url, "a note about red apples")
        assert "notes/apples" in page.inner_text("#results")
        assert page.locator(".card").count() == len(photo_index)

        page.fill("#q", "")
        page.evaluate(DROP, [base64.b64encode(png_bytes((30, 40, 220), (64, 48))).decode(), "blue.png"])
        page.wait_for_function("document.querySelector('.card .id').textContent === 'photos/blue.png'")
        # every photo result shows its thumbnail
        page.wait_for_function("[...document.querySelectorAll('.card img')].filter(i => i.naturalWidth > 0).length === 3")
        first = page.locator(".card").first
        assert not page.is_hidden("#chip")

        first.focus()
        page.keyboard.press("Enter")
        page.wait_for_selector("#detail[open] .detail-media img")
        page.wait_for_function("document.querySelector('#detail .detail-media img').naturalWidth > 0")
        assert "colour" in page.inner_text("#detail-meta")
        shot = tmp_path / "serve-page-detail.png"
        page.screenshot(path=str(shot))
        page.keyboard.press("Escape")
        grid = tmp_path / "serve-page.png"
        page.screenshot(path=str(grid), full_page=True)

        phone = browser.new_page(viewport={"width": 390, "height": 800}, is_mobile=True)
        phone.goto(live.url + "/")
        phone.fill("#q", "red")
        phone.keyboard.press("Enter")
        phone.wait_for_selector(".card")
        assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # no sideways scrolling
        phone_shot = tmp_path / "serve-page-phone.png"
        phone.screenshot(path=str(phone_shot))
        browser.close()
    assert errors == []
    for path in (grid, shot, phone_shot):
        assert path.stat().st_size > 5000
        print(f"screenshot: {path}")
