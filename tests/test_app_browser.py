"""Browser test of app.py: `streamlit run` on a free localhost port, driven by Debian's headless chromium.

Uses the Python playwright package with executable_path=/usr/bin/chromium (never `playwright install`).
Skipped when chromium or playwright is missing. The same code makes the README screenshot:

    .venv/bin/python tests/test_app_browser.py --model runs/horse/horse.onnx --out docs/app.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HORSES = SHARED_DATA / "weizmann_horse" / "images" / "val"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags for a closed network: without the background-networking ones chromium keeps dialling out.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def streamlit_server(model: Path, timeout: float = 40.0):
    """`streamlit run app.py` on 127.0.0.1:<free port>; yields its URL, stops it afterwards."""
    port = free_port()
    env = {**os.environ, "MODEL_PATH": str(model)}
    # No file watcher: on a fresh clone, the first imports write .pyc files all over .venv (and node_modules sits
    # in the tree too), and streamlit's recursive inotify watch of the repository overflows and stalls the session.
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
               "--server.fileWatcherType", "none",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"streamlit did not start: {log.read().decode(errors='replace')[-2000:]}")
                    time.sleep(0.3)
            try:
                yield url
            except Exception as error:  # a failure in the browser: show what the server said too
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"{error}\n--- streamlit log (tail) ---\n{tail}") from error
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()


APP_IDLE = '[data-testid="stApp"][data-test-connection-state="CONNECTED"][data-test-script-state="notRunning"]'


def screenshot_single_image(url: str, image: Path, out: Path, profile: Path, size=(1400, 900),
                            timeout_ms: int = 120_000) -> dict:
    """Upload `image` in single-image mode, wait for the overlay, save a screenshot; returns what was shown."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": size[0], "height": size[1]},
        )
        try:
            page = browser.new_page()
            # A cold first run on a loaded 2-core CI box (imports, session creation) can take a while.
            page.set_default_timeout(timeout_ms)
            page.goto(url)
            # Upload only once the websocket is up and the first script run has finished; an upload sent
            # earlier can be dropped by the session that is still starting.
            page.locator(APP_IDLE).wait_for(state="attached")
            page.locator("input[type=file]").first.set_input_files(str(image))
            overlay = page.locator('[data-testid="stImage"]', has_text="Overlay").locator("img")
            try:
                overlay.wait_for(state="visible")
            except Exception as error:
                shown = page.locator('[data-testid="stApp"]').inner_text(timeout=5_000)
                raise AssertionError(f"no overlay after the upload ({error}); the page shows:\n{shown[-2000:]}")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=overlay.element_handle())
            area = page.locator('[data-testid="stMetric"]', has_text="Area %")
            area.wait_for()
            page.wait_for_timeout(500)  # let the layout settle before the picture
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
            return {"area": area.inner_text(), "errors": errors,
                    "overlay_width": overlay.evaluate("img => img.naturalWidth")}
        finally:
            browser.close()


def tiny_model(path: Path) -> Path:
    from test_app import build_model  # the same tiny generated model as the AppTest tests

    return build_model(path)


def test_browser_uploads_an_image_and_shows_the_overlay(tmp_path):
    if not Path(CHROMIUM).is_file():
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium chromium-driver)")
    pytest.importorskip("playwright", reason="playwright is not installed (pip install -r requirements-app.txt)")
    horses = sorted(HORSES.glob("*.jpg"))
    if horses:
        image = horses[0]
    else:  # no shared data here: the tiny model's own test picture
        import cv2
        from test_app import rect_image

        image = tmp_path / "rect.png"
        cv2.imwrite(str(image), rect_image())
    shot = tmp_path / "app.png"
    with streamlit_server(tiny_model(tmp_path / "tiny.onnx")) as url:
        shown = screenshot_single_image(url, image, shot, tmp_path / "profile")
    assert shown["errors"] == []
    assert shown["overlay_width"] > 0
    assert "Area %" in shown["area"] and "%" in shown["area"].replace("Area %", "")
    assert shot.stat().st_size > 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot of app.py's single-image mode (docs/app.png).")
    parser.add_argument("--model", required=True, help="the .onnx the page loads (relative to the repo root)")
    parser.add_argument("--image", default=None, help="image to upload (default: the first validation horse)")
    parser.add_argument("--out", default="docs/app.png")
    args = parser.parse_args()
    image = Path(args.image) if args.image else sorted(HORSES.glob("*.jpg"))[0]
    with tempfile.TemporaryDirectory() as tmp, streamlit_server(Path(args.model)) as url:
        print(json.dumps(screenshot_single_image(url, image.resolve(), Path(args.out), Path(tmp) / "profile")))


if __name__ == "__main__":
    main()
