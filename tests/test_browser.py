"""The serve page in headless Chromium (Debian's /usr/bin/chromium driven by Playwright; nothing downloaded).

Marked ``browser``: run with ``pytest -m browser``; skipped when Playwright or a Chromium binary is missing.
"""
from __future__ import annotations

import os
import shutil

import pytest

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = os.environ.get("DIFFLAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no chromium binary (apt-get install chromium)", allow_module_level=True)

from difflab.serve import Server, Service  # noqa: E402

from test_serve import make_run  # noqa: E402


@pytest.fixture
def page(tmp_path):
    srv = Server(Service(make_run(tmp_path / "run")), "127.0.0.1", 0)
    srv.start()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.goto(srv.url)
        pg.wait_for_selector("body[data-ready='1']", timeout=20000)
        yield pg
        browser.close()
    srv.stop()


def generate(pg, seed: int, steps: int = 3, num: int = 4) -> str:
    """Set the controls, press Generate, wait for the grid; returns its data URL."""
    previous = pg.get_attribute("#result", "src")
    pg.fill("#steps", str(steps))
    pg.fill("#num", str(num))
    pg.fill("#seed", str(seed))
    pg.select_option("#sampler", "ddim")
    pg.click("#generate")
    pg.wait_for_function("prev => { const r = document.getElementById('result');"
                         " return r.complete && r.naturalWidth > 0 && r.src !== prev && r.src.startsWith('data:'); }",
                         arg=previous or "", timeout=30000)
    return pg.get_attribute("#result", "src")


def test_generate_shows_the_grid_and_it_changes_with_the_seed(page):
    first = generate(page, seed=1)
    size = page.evaluate("() => [document.getElementById('result').naturalWidth, document.getElementById('result').naturalHeight]")
    assert size == [76, 76]  # 2 x 2 grid of 8x8 images, 1 px padding, upscaled 4x
    assert page.locator("#previews img").count() == 3  # one x0 estimate per step
    assert page.get_attribute("#dl-png", "href").endswith("/image.png")
    assert generate(page, seed=2) != first
    assert generate(page, seed=1) == first


def test_bad_input_shows_a_message(page):
    page.fill("#steps", "0")
    page.click("#generate")
    page.wait_for_selector("#error:visible", timeout=10000)
    assert "steps must lie in 1..1000" in page.inner_text("#error")
    page.fill("#steps", "3")
    page.select_option("#task", "inpaint")
    page.click("#run-edit")  # nothing painted: the whole mask is kept
    page.wait_for_selector("#edit-error:visible", timeout=10000)
    assert "nothing to fill" in page.inner_text("#edit-error")


def test_inpaint_panel_runs(page):
    generate(page, seed=3)
    page.click("#use-sample")
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.7)
    page.mouse.up()
    before = page.get_attribute("#result", "src")
    page.click("#run-edit")
    page.wait_for_function("prev => document.getElementById('result').src !== prev", arg=before, timeout=30000)
    assert page.inner_text("#status").startswith("inpaint: done")
