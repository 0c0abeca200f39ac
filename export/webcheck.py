"""A site of ``densreg web`` in a real browser: served from 127.0.0.1, opened in headless Chromium.

    with serve(site) as url, chromium() as browser:
        page = open_page(browser, url)           # waits for the first score
        page.evaluate("densregPage.last.logProb")

Used by the tests and benchmarks/web.py. Chromium is the system's (Debian's ``chromium`` package,
``/usr/bin/chromium``), driven by Playwright for Python through ``executable_path``: Playwright
never downloads a browser here. ``missing()`` says what is absent, for a clear skip.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

CHROMIUM_ENV = "DENSREG_CHROMIUM"
# Headless, and quiet on a machine without a network: no background requests, no GPU process
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage")
# A WebGPU adapter without a GPU: SwiftShader's software Vulkan, which Debian's chromium ships
SOFTWARE_WEBGPU_ARGS = ("--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-vulkan=swiftshader",
                        "--use-webgpu-adapter=swiftshader", "--use-angle=swiftshader")
LOAD_TIMEOUT_MS = 120_000


def chromium_path() -> str | None:
    """$DENSREG_CHROMIUM, else chromium (or chromium-browser) on PATH."""
    return os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")


def missing() -> str | None:
    """Why a browser check cannot run here (one line naming how to get what is missing), or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e \".[test]\")"
    if chromium_path() is None:
        return f"no Chromium on PATH (apt-get install chromium, or set {CHROMIUM_ENV})"
    return None


class _Handler(SimpleHTTPRequestHandler):
    extensions_map = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
                      ".json": "application/json", ".onnx": "application/octet-stream",
                      ".bin": "application/octet-stream", ".html": "text/html"}

    def log_message(self, *args) -> None:  # quiet: a test reads what the page shows, not the access log
        pass


@contextlib.contextmanager
def serve(site):
    """Serve the folder ``site`` on 127.0.0.1 (a free port) while the block runs; yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def launch(playwright, webgpu: bool = False):
    """Headless system Chromium from a running Playwright (``sync_playwright()``, one per thread). Without
    a GPU it offers no WebGPU adapter, so pages use WASM; ``webgpu=True`` gives it SwiftShader's
    software one."""
    args = [a for a in CHROMIUM_ARGS if a != "--disable-gpu"] + list(SOFTWARE_WEBGPU_ARGS) if webgpu \
        else list(CHROMIUM_ARGS)
    return playwright.chromium.launch(executable_path=chromium_path(), args=args)


@contextlib.contextmanager
def chromium(webgpu: bool = False):
    """Playwright and ``launch``'s browser for the block; yields the browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch(playwright, webgpu)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url: str, query: str = "", width: int = 1400, height: int = 900):
    """A new page of ``browser`` (or of a browser context) at ``url`` (``query`` e.g. "?backend=wasm"),
    once it has scored its first image; its console errors and page errors are collected in
    ``page.densreg_errors``. RuntimeError when the page reports an error instead."""
    viewport = {"width": width, "height": height}  # a browser context has its own viewport
    page = browser.new_page(**({"viewport": viewport} if hasattr(browser, "new_context") else {}))
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.densreg_errors = errors
    page.goto(url + "index.html" + query)
    page.wait_for_function("window.densregPage && (window.densregPage.last || window.densregPage.error)",
                           timeout=LOAD_TIMEOUT_MS)
    error = page.evaluate("densregPage.error || null")
    if error:
        raise RuntimeError(f"the page failed: {error}; console: {'; '.join(errors)}")
    return page


def run_view(page, name: str, **fields) -> dict:
    """Fill a view's inputs (``keep``, ``complete-n``, ...: element ids), press its button, and return
    what it drew (``densregPage.completion`` or ``densregPage.samples``)."""
    result = {"complete": "completion", "sample": "samples"}[name]
    for field, value in fields.items():
        page.fill(f"#{field}", str(value))
    page.evaluate(f"densregPage.{result} = null")
    page.click(f"#{name}-run")
    page.wait_for_function(f"densregPage.{result}", timeout=LOAD_TIMEOUT_MS)
    return page.evaluate(f"densregPage.{result}")


def draw(page, *strokes) -> None:
    """Draw strokes on the page's canvas with the mouse; each stroke a list of (x, y) points as fractions of
    the canvas (0 to 1), passed through in steps of at most 0.05."""
    box = page.locator("#draw").bounding_box()
    at = lambda x, y: (box["x"] + box["width"] * x, box["y"] + box["height"] * y)  # noqa: E731
    for points in strokes:
        page.mouse.move(*at(*points[0]))
        page.mouse.down()
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            steps = max(1, int(max(abs(x1 - x0), abs(y1 - y0)) / 0.05))
            for i in range(1, steps + 1):
                page.mouse.move(*at(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps))
        page.mouse.up()
