"""The web page in a real browser: headless Debian Chromium driven by playwright, server on 127.0.0.1.

Needs /usr/bin/chromium (``apt-get install -y chromium``; .ci/run installs it) and the playwright
Python package; never ``playwright install``. Without Chromium the test is skipped with that reason,
except under CI (``CI=true``), where a missing browser is a failure: CI must run it.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.slow  # trains several stages or runs subprocesses; see pyproject.toml

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def live_server(tiny_runs, tmp_path):
    import uvicorn

    from aldm.serve.app import create_app

    app = create_app([tiny_runs["ldm"], tiny_runs["fewshot"]], out=str(tmp_path / "serve"))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _canvas_std(page, canvas_id: str) -> float:
    """Standard deviation of a canvas's grey values (0 for a blank canvas)."""
    return page.evaluate("""(id) => {
        const c = document.getElementById(id);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0, s2 = 0, n = 0;
        for (let i = 0; i < d.length; i += 4) { s += d[i]; s2 += d[i] * d[i]; n++; }
        return n ? Math.sqrt(Math.max(0, s2 / n - (s / n) ** 2)) : 0;
    }""", canvas_id)


@pytest.fixture()
def chromium():
    """The browser's path; skip (fail under CI) before anything is trained when it is missing."""
    if not os.path.exists(CHROMIUM):
        reason = f"{CHROMIUM} missing: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def test_page_generates_and_shows_slices_beside_ground_truth(chromium, live_server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.goto(live_server)
        page.wait_for_selector("#model option[value=fewshot]", state="attached")
        page.select_option("#model", "fewshot")
        page.fill("#n", "3")
        page.fill("#steps", "4")
        page.fill("#guidance", "2")
        start = time.monotonic()
        page.click("#generate")
        page.wait_for_selector("#status-text[data-status=done]", timeout=120_000)
        elapsed = time.monotonic() - start
        page.wait_for_selector("#viewer:not([hidden])")
        # a selector, not wait_for_function: the page's CSP (no eval) holds for the test harness too
        page.wait_for_selector("#ref-title:text-matches('^Ground truth')")
        # slices of the synthetic volume and of the real subject, all three planes and the 3D view
        for prefix in ("syn", "ref"):
            for view in ("axial", "coronal", "sagittal", "mip"):
                assert _canvas_std(page, f"{prefix}-{view}") > 2.0, f"{prefix}-{view} is blank"
        subject = page.get_attribute("#row-ref", "data-subject")
        assert subject and subject in page.text_content("#syn-title")
        assert page.locator("#samples li").count() == 3
        assert page.locator("#samples li .gt").count() >= 1
        shot = tmp_path / "aldm-serve.png"
        page.screenshot(path=str(shot), full_page=True)
        # controls redraw: toggling the overlay changes the picture
        before = _canvas_std(page, "syn-axial")
        page.click("#overlay")
        page.fill("#window", "60")
        page.dispatch_event("#window", "input")
        assert _canvas_std(page, "syn-axial") != before
        # a relocated sample shows its host anatomy
        page.click("#samples li:nth-child(3)")
        page.wait_for_selector("#ref-title:text-matches('^Host anatomy')")
        assert page.locator("#downloads a").count() >= 5
        browser.close()
    assert shot.stat().st_size > 10_000
    assert not errors, errors  # a script the CSP blocked would be a page error too
    print(f"\none tiny 3-sample generation through the UI: {elapsed:.1f} s; screenshot {shot}")
