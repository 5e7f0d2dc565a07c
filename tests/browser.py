"""Open an HTML file in headless Chromium (Debian's, installed by `make test`) through Playwright:
what the page drew and what it complained about."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed (make test installs Debian's chromium)")
    return exe


def render(html: Path, screenshot: Path | None = None) -> dict[str, Any]:
    """The bounding box of every ``figure.plot`` and its ``svg``, console errors and page errors,
    and requests that left the file (a self-contained report makes none)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on(
                "console",
                lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
            page.on(
                "request",
                lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
            )
            page.goto(html.resolve().as_uri(), wait_until="load")
            figures = page.eval_on_selector_all(
                "figure.plot",
                """els => els.map(f => {
                    const s = f.querySelector('svg');
                    const r = s ? s.getBoundingClientRect() : {width: 0, height: 0};
                    return {svg: !!s, width: r.width, height: r.height,
                            shapes: s ? s.querySelectorAll('path, rect, use, image').length : 0};
                })""",
            )
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"figures": figures, "errors": errors, "requests": requests}


def assert_drawn(result: dict[str, Any], n_figures: int) -> None:
    figs = result["figures"]
    assert len(figs) == n_figures, figs
    for f in figs:
        assert f["svg"] and f["width"] > 50 and f["height"] > 50 and f["shapes"] > 0, f
    assert result["errors"] == [], result["errors"]
    assert result["requests"] == [], result["requests"]
