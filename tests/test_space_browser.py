"""End to end: the Space's page in headless Chromium (Debian's package, driven by Playwright).

The app runs in its own process on 127.0.0.1 with a tiny model folder; the test uploads a picture, types boxes and
labels, presses the button and reads the results from the page, then checks that bad input shows a message.
Skipped only when the browser or Playwright is missing outside CI; in CI (`CI` set) that is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from space_support import BOXES_TEXT, IMAGE_SIZE, LABELS, LABELS_TEXT, SPACE_DIR, save_tiny_model_folder, scene_image

# Drives the Space in headless Chromium: the browser tier.
pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("HARMOCLIP_CHROMIUM", "/usr/bin/chromium"))  # Debian's package
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_TIMEOUT_S = 90
RESULT_TIMEOUT_MS = 30_000


def _browser_or_skip():
    """Playwright's sync API; skips (outside CI) when it or the system Chromium is missing."""
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
        problems.append("the playwright package is missing")
    try:
        import gradio  # noqa: F401
    except ImportError:
        problems.append("gradio is missing")
    if problems:
        message = f"{'; '.join(problems)} (install with scripts/install_browser_test_deps.sh)"
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: {message}")
        pytest.skip(message)
    return sync_api


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def sync_api():
    """Playwright's sync API, checked before anything is started."""
    return _browser_or_skip()


@pytest.fixture
def space_url(sync_api, tmp_path, tiny_tokenizer):
    """The app serving a tiny model on a free local port; stopped (and its log attached on failure) afterwards."""
    model_dir = save_tiny_model_folder(tmp_path / "model", tiny_tokenizer)
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(
        HARMOCLIP_MODEL=str(model_dir),
        GRADIO_SERVER_NAME="127.0.0.1",
        GRADIO_SERVER_PORT=str(port),
        GRADIO_ANALYTICS_ENABLED="False",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TOKENIZERS_PARALLELISM="false",
    )
    log_path = tmp_path / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SPACE_DIR / "app.py")], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"the app exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the app did not answer on {url} within {STARTUP_TIMEOUT_S} s:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


def test_space_page_classifies_typed_boxes(sync_api, space_url, tmp_path):
    image_path = tmp_path / "scene.png"
    scene_image().save(image_path)
    screenshot = tmp_path / "space.png"
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 1400},
        )
        try:
            page = context.new_page()
            # Only the app itself: fonts or anything else from the internet are refused at once.
            page.route(
                "**/*", lambda route: route.continue_() if route.request.url.startswith(space_url) else route.abort()
            )
            page.goto(space_url, wait_until="domcontentloaded")
            page.locator("#image-input input[type=file]").set_input_files(str(image_path))
            page.locator("#image-input img").wait_for(timeout=RESULT_TIMEOUT_MS)
            page.locator("#labels textarea").fill(LABELS_TEXT)
            page.locator("#boxes textarea").fill(BOXES_TEXT)
            page.locator("#run").click()

            labelled = page.locator("#labelled-image img")
            labelled.wait_for(timeout=RESULT_TIMEOUT_MS)
            page.wait_for_function(
                "() => document.querySelector('#labelled-image img').naturalWidth > 0", timeout=RESULT_TIMEOUT_MS
            )
            assert labelled.evaluate("img => [img.naturalWidth, img.naturalHeight]") == list(IMAGE_SIZE)
            status = page.locator("#status")
            assert "Classified 2 box(es)" in status.inner_text()
            table_text = page.locator("#results-table").inner_text()
            assert "8, 8, 40, 40" in table_text and "50, 20, 90, 60" in table_text
            for label in LABELS:
                assert label in table_text
                assert label in page.locator("#ranking").inner_text()
            assert page.locator("#heatmap img").count() == 1
            page.screenshot(path=str(screenshot), full_page=True)

            # A malformed box line: a readable message in the page, the results cleared, no traceback.
            page.locator("#boxes textarea").fill("8, 8, 40")
            page.locator("#run").click()
            page.get_by_text("Box line 1 ('8, 8, 40'): expected four numbers").wait_for(timeout=RESULT_TIMEOUT_MS)
            assert page.locator("#labelled-image img").count() == 0
            assert "Traceback" not in page.content()
        finally:
            context.close()
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("HARMOCLIP_SCREENSHOT_DIR"):  # keep a copy to look at
        shutil.copy(screenshot, Path(os.environ["HARMOCLIP_SCREENSHOT_DIR"]) / screenshot.name)
