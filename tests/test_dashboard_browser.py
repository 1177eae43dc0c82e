"""The dashboard in a real browser: start `mucode dashboard` on a free port against a seeded SQLite store (two
experiments), open every page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright; no browser
download), wait for Streamlit to finish rendering, fail on any exception text, and keep screenshots in
test-artifacts/dashboard/."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.dashboard_seed import seed_comparison, seed_dashboard

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Exception names the seeded data itself shows (error types, feedback, a failed job); any other *Error on a
# page is an exception of the app.
SEEDED_ERROR_NAMES = {"NameError", "AssertionError", "SyntaxError", "ZeroDivisionError", "MemoryError",
                      "RuntimeError"}
RENDER_TIMEOUT_MS = 60_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)
playwright_sync = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.store import Store

    db = tmp_path_factory.mktemp("browser") / "seeded.db"
    url = f"sqlite:///{db}"
    store = Store(url)
    store.upgrade()
    ids = seed_dashboard(store)
    ids["rft"] = seed_comparison(store, ids)  # a second experiment, older: exp-demo stays the default
    store.dispose()
    port = _free_port()
    env = dict(os.environ, MUCODE_DATABASE_URL=url)
    log = open(tmp_path_factory.mktemp("log") / "dashboard.log", "w+")  # noqa: SIM115 - lives as long as the server
    mucode = Path(sys.executable).with_name("mucode")
    cmd = [str(mucode)] if mucode.exists() else [sys.executable, "-m", "app.cli.main"]
    proc = subprocess.Popen(cmd + ["dashboard", "--port", str(port), "--address", "127.0.0.1"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            proc.kill()
            pytest.fail(f"mucode dashboard did not start (exit {proc.poll()}):\n{log.read()[-3000:]}")
        time.sleep(0.5)
    yield base, ids
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tmp_path_factory.mktemp("chromium-profile")
    with playwright_sync.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1440, "height": 2000},
        )
        page = ctx.new_page()
        page.set_default_timeout(RENDER_TIMEOUT_MS)
        yield page
        ctx.close()


def _wait_rendered(page, title: str) -> None:
    """Wait for the page's own title and the app's footer (the last element every page draws), then for
    Streamlit's "Running..." status to go away and the content to stop changing."""
    page.get_by_role("heading", name=title).first.wait_for(state="visible")
    page.get_by_text("mucode dashboard ·").first.wait_for(state="visible")
    page.wait_for_function(
        """() => !document.querySelector('[data-testid="stStatusWidget"]') ||
                 !/Running|Connecting/i.test(document.querySelector('[data-testid="stStatusWidget"]').innerText)""",
        timeout=RENDER_TIMEOUT_MS,
    )
    last, stable_since = None, time.time()
    while time.time() - stable_since < 1.5:  # the DOM text must be unchanged for 1.5 s
        now = page.inner_text("body")
        if now != last:
            last, stable_since = now, time.time()
        time.sleep(0.25)
    try:  # let charts finish drawing before the screenshot
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-testid=\"stVegaLiteChart\"]')].every("
            "c => c.querySelector('canvas, svg'))", timeout=15_000)
    except playwright_sync.TimeoutError:
        pass


def _assert_no_exception(page, name: str) -> str:
    body = page.inner_text("body")
    problems = []
    if page.locator('[data-testid="stException"]').count():
        problems.append("a Streamlit exception element")
    if page.locator('[data-testid="stAlertContentError"]').count():
        problems.append("an st.error alert: " + page.locator('[data-testid="stAlertContentError"]').first.inner_text())
    for needle in ("Traceback", "StreamlitAPIException", "Connection error", "Error running app", "Page not found"):
        if needle in body:
            problems.append(f"the text {needle!r}")
    unknown = set(re.findall(r"\b[A-Z][A-Za-z]*(?:Error|Exception)\b", body)) - SEEDED_ERROR_NAMES
    if unknown:
        problems.append(f"exception names {sorted(unknown)}")
    if problems:
        page.screenshot(path=str(ARTIFACTS / f"{name}-FAILED.png"), full_page=True)
    assert not problems, f"{name}: " + "; ".join(problems) + "\n" + body[:3000]
    return body


def _screenshot(page, name: str) -> None:
    """The whole page: Streamlit scrolls inside its main container, so grow the viewport to fit it first."""
    height = page.evaluate(
        "() => Math.max(...[...document.querySelectorAll('[data-testid=\"stMain\"], "
        "[data-testid=\"stAppViewContainer\"], section.main')].map(e => e.scrollHeight), 800)")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(int(height) + 40, 16000)})
    time.sleep(0.5)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)


def _visit(page, base: str, path: str, title: str, name: str) -> str:
    page.goto(base + path, wait_until="domcontentloaded")
    _wait_rendered(page, title)
    body = _assert_no_exception(page, name)
    _screenshot(page, name)
    return body


def test_every_page_renders_in_chromium(server, browser_page):
    base, ids = server
    page = browser_page
    body = _visit(page, base, "/", "Overview", "overview")  # the default page lives at the root
    # (tables are drawn on a canvas: their cells are not page text)
    assert "Accuracy per round" in body and "Verifier vs oracle" in body and "How long each step took" in body

    rid = ids["rollouts"]["r0/602/0"]
    body = _visit(page, base, f"/trajectories?problem=mbpp/602&rollout={rid}", "Trajectories", "trajectories")
    assert "while True" in body and "Timeout: the code ran longer" in body and "✗ fail" in body
    assert "Compare two turns" in body

    body = _visit(page, base, "/failures", "Failures", "failures")
    assert "Error types per round" in body and "mbpp/603" in body

    body = _visit(page, base, "/rankings?problem=mbpp/602", "Rankings", "rankings")
    assert "candidates ranked by verifier score" in body and "Verifier metrics per version" in body
    assert "Calibration and ROC per round" in body and "Reliability diagram" in body
    assert page.locator('[data-testid="stVegaLiteChart"]').count() >= 4

    body = _visit(page, base, "/compare", "Compare", "compare")
    for heading in ("Accuracy per round", "Accuracy per turn", "Paired differences", "Best-of-n scaling"):
        assert heading in body, heading
    assert "exp-demo" in body and "exp-rft" in body  # both experiments are chosen
    assert "Exact (unbiased) for the first turn only" in body
    # per-round bands, per-turn bands and the scaling curve are drawn
    assert page.locator('[data-testid="stVegaLiteChart"]').count() == 3
    assert page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg').count() >= 3


def test_a_click_goes_from_failures_to_the_example(server, browser_page):
    base, ids = server
    page = browser_page
    _visit(page, base, "/failures?round=0&error=NameError", "Failures", "failures-examples")
    page.get_by_text("Open mbpp/601 rollout").first.click()
    page.wait_for_url(re.compile(r".*/trajectories\?.*"))
    _wait_rendered(page, "Trajectories")
    body = _assert_no_exception(page, "trajectories-from-failures")
    _screenshot(page, "trajectories-from-failures")
    assert f"rollout={ids['rollouts']['r0/601/0']}" in page.url
    assert "return foo(x)" in body


def test_widgets_rerun_the_whole_app(server, browser_page):
    """A widget change reruns the app with its sidebar (the experiment picker) and the page's new content."""
    base, _ = server
    page = browser_page
    _visit(page, base, "/failures", "Failures", "failures-train")
    page.get_by_text("evaluation chains").first.click()
    page.get_by_text("HumanEval/2 →").first.wait_for(state="visible")
    _wait_rendered(page, "Failures")
    body = _assert_no_exception(page, "failures-eval")
    _screenshot(page, "failures-eval")
    sidebar = page.locator('[data-testid="stSidebar"]').inner_text()
    assert "Experiment" in sidebar and "Candidate-level sections cover" in sidebar
    assert "mbpp/603 →" not in body  # the training list was replaced by the evaluation one
