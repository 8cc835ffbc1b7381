"""`mage-hf demo` in a real browser: headless Chromium (Debian's, driven by Playwright) loads the page that the
command serves, generates, paints a mask stroke and regenerates, makes variations and finds neighbours.

A screenshot of each tab is saved to `$MAGE_DEMO_SCREENSHOTS` (`MAGE_DEMO_SCREENSHOTS=docs/images` refreshes the
docs' pictures) or else to a temporary folder. Skipped, with the reason, without Chromium or Playwright;
`.ci/run` installs both.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
pytest.importorskip("gradio", reason='the demo needs gradio: pip install -e ".[demo]"')

# Headless, and nothing that reaches for the network (this machine has none: without these Chromium stalls).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT = 180  # s: imports torch, transformers, diffusers and gradio on a busy 2-core machine
RESULT_TIMEOUT = 60_000  # ms for one request's result to show


def chromium_path() -> str | None:
    """Debian's Chromium (apt-get install chromium), or $MAGE_DEMO_CHROMIUM; Playwright's own download cannot
    work offline."""
    for candidate in (os.environ.get("MAGE_DEMO_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(chromium_path() is None, reason="no Chromium found (apt-get install chromium; "
                                                       "or set MAGE_DEMO_CHROMIUM): .ci/run installs it"),
]


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("MAGE_DEMO_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def server_url(tmp_path_factory) -> str:
    """`python -m mage_hf demo --port N` on a free loopback port, started as a user would, offline."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log_path = tmp_path_factory.mktemp("server") / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "mage_hf", "demo", "--port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while url not in log_path.read_text():
        assert process.poll() is None, f"mage-hf demo exited:\n{log_path.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"mage-hf demo did not start:\n{log_path.read_text()[-3000:]}"
        time.sleep(0.5)
    assert "this machine only" in log_path.read_text()
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser_page(server_url, tmp_path_factory):
    """A Chromium page on the demo, with every request that leaves the loopback and every page error recorded."""
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium_path(), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.outside_requests, page.errors = [], []
        page.on("request", lambda request: request.url.startswith(("http://127.0.0.1", "data:", "blob:"))
                or page.outside_requests.append(request.url))
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(server_url, wait_until="domcontentloaded")
        yield page
        context.close()


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def shown_image(page, image) -> PIL.Image.Image:
    """The picture an <img> element shows, fetched from its source."""
    source = image.get_attribute("src")
    response = page.request.get(source if source.startswith("http") else page.url.rstrip("/") + "/" + source)
    return PIL.Image.open(io.BytesIO(response.body())).convert("RGB")


def assert_not_blank(image: PIL.Image.Image) -> None:
    pixels = np.asarray(image, dtype=float)
    assert pixels.max() - pixels.min() > 100 and pixels.std() > 10, "the image is (nearly) uniform"


def wait_for_gallery(page, gallery_id: str, count: int):
    images = page.locator(f"#{gallery_id} img")
    images.nth(count - 1).wait_for(timeout=RESULT_TIMEOUT)
    for index in range(count):
        image = shown_image(page, images.nth(index))
        assert image.size == (256, 256)
        assert_not_blank(image)
    return images


def test_the_page_loads_offline_with_four_tabs(browser_page):
    page = browser_page
    for name in ("Generate", "Inpaint / outpaint", "Variations", "Features"):
        page.get_by_role("tab", name=name).wait_for(timeout=RESULT_TIMEOUT)
    assert page.title() == "MAGE demo"
    assert page.outside_requests == [] and page.errors == []


def test_generate_shows_seeded_images_and_their_command(browser_page, screenshots):
    page = browser_page
    open_tab(page, "Generate")
    tab = page.locator("#tab-generate")
    tab.get_by_label("Class").click()
    page.get_by_role("option", name="3", exact=True).click()
    tab.get_by_text("Decoding settings").click()  # shown in the screenshot
    page.locator("#generate-button").click()
    wait_for_gallery(page, "generate-gallery", 8)
    assert_not_blank(shown_image(page, page.locator("#generate-live img")))
    assert "mage-hf generate --class-label 3 --guidance-scale 2.0" in page.locator("#generate-command").inner_text()
    page.get_by_text("3 · seed 7").wait_for()
    page.screenshot(path=screenshots / "demo_generate.png", full_page=True)


def test_inpaint_a_brush_stroke(browser_page, screenshots):
    page = browser_page
    open_tab(page, "Inpaint / outpaint")
    tab = page.locator("#tab-inpaint")
    tab.locator("button.gallery-item").nth(3).click()  # the example "3"
    page.locator("#inpaint-editor").get_by_text("Upload an image").wait_for(state="hidden")  # it is loaded
    page.locator("#inpaint-button").click()  # nothing painted yet: a message, not a traceback
    page.get_by_text("The mask is empty").first.wait_for(timeout=RESULT_TIMEOUT)
    page.locator(".toast-close").first.click()

    page.locator("#inpaint-editor button[aria-label='Brush']").click()
    box = page.locator("#inpaint-editor canvas").first.bounding_box()
    y = box["y"] + box["height"] * 0.55
    page.mouse.move(box["x"] + box["width"] * 0.2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.8, y, steps=20)
    page.mouse.up()
    page.locator("#inpaint-button").click()
    wait_for_gallery(page, "inpaint-gallery", 4)
    before = shown_image(page, page.locator("#inpaint-before img"))
    assert_not_blank(before)
    grey = float((np.asarray(before)[::8, ::8] == 128).all(axis=-1).mean())
    assert 0.05 < grey < 0.6, f"the stroke's tokens are shown grey, the others not ({grey:.0%} grey)"
    page.screenshot(path=screenshots / "demo_inpaint.png", full_page=True)


def test_variations_of_an_example(browser_page, screenshots):
    page = browser_page
    open_tab(page, "Variations")
    page.locator("#tab-variations button.gallery-item").nth(5).click()
    page.locator("#variations-input img").wait_for()
    page.locator("#variations-button").click()
    wait_for_gallery(page, "variations-gallery", 8)
    page.screenshot(path=screenshots / "demo_variations.png", full_page=True)


def test_features_find_the_digits_neighbours(browser_page, screenshots):
    page = browser_page
    open_tab(page, "Features")
    page.locator("#tab-features button.gallery-item").nth(7).click()  # the example "7"
    page.locator("#features-input img").wait_for()
    page.locator("#features-button").click()
    images = page.locator("#features-gallery img")
    images.nth(7).wait_for(timeout=RESULT_TIMEOUT)
    assert_not_blank(shown_image(page, images.first))
    page.locator("#features-votes").get_by_text("7").first.wait_for()
    page.screenshot(path=screenshots / "demo_features.png", full_page=True)
    assert page.outside_requests == [] and page.errors == []
