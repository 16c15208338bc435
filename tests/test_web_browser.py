"""The web catalogue in a real browser: Debian's Chromium driven by Playwright against `spr ui`.

Chromium comes from the distribution (``apt-get install chromium``; ``.ci/run`` installs it), not
from ``playwright install``, which cannot reach its download site from these machines. Without a
browser these tests skip and say why. Each page is saved as a screenshot under the test's tmp dir;
``SPR_UI_SCREENSHOTS=DIR`` saves them there instead (how ``docs/ui-*.png`` were made).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("SPR_TEST_CHROMIUM", "/usr/bin/chromium")
if not Path(CHROMIUM).exists():
    pytest.skip(f"no browser at {CHROMIUM}: apt-get install chromium (or set SPR_TEST_CHROMIUM)",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the [test] extra)")
pytest.importorskip("starlette", reason="spr ui needs the [ui] extra")

from test_web import XSS, _publish  # noqa: E402

from registry import catalogue  # noqa: E402
from registry.cli.inputs import parse_eval  # noqa: E402

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
TOKEN = "browser-test-token"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """`spr ui --token` serving a small catalogue with a lineage, an import, evals and hostile text."""
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "hello"}\n{"text": "world"}\n')
    heldout = "heldout.jsonl"
    root = _publish(tmp_path, "team/coach", 1, description="answers like a coach " + XSS, tags={"team": XSS},
                    template="Q: {prompt}\nA: ", dataset=data, evals=[parse_eval(f"accuracy=0.52@{heldout}")],
                    training={"lr": 0.1, "loss_curve": [[i, 3.0 / (i + 1)] for i in range(20)]})
    child = _publish(tmp_path, "team/coach", 2, parent=root, dataset=data,
                     evals=[parse_eval(f"accuracy=0.61@{heldout}")])
    third = _publish(tmp_path, "team/coach", 3, parent=child, dataset=data,
                     evals=[parse_eval(f"accuracy=0.66@{heldout}")])
    _publish(tmp_path, "hub/imported", 4, parent=third, lineage_verified=False, description="from spr import")
    for i in range(5, 9):
        _publish(tmp_path, f"team/helper-{i}", i, description=f"helper {i}")
    catalogue.set_alias(third, "prod", actor="alice")
    catalogue.set_alias(child, "prod", actor="bob")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SPR_UI_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "registry.cli.main", "ui", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("spr ui did not start: " + (proc.stderr.read().decode() if proc.stderr else "")) from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            yield context.new_page()
        finally:
            browser.close()


def test_an_auditor_walks_the_catalogue(site: str, page: Any, tmp_path: Path) -> None:
    shots = Path(os.environ.get("SPR_UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    dialogs: list[str] = []
    console_errors: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

    # The token: the first visit lands on the login form, which leads back to the page asked for.
    page.goto(site + "/")
    assert page.url.startswith(site + "/login")
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == site + "/"

    # The list: every adapter, then a search.
    rows = page.locator("table.adapters tbody tr")
    assert rows.count() == 6
    page.screenshot(path=str(shots / "ui-list.png"))
    page.fill("input[name=q]", "coach")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state()
    assert "q=coach" in page.url
    assert rows.count() == 1
    assert page.locator("table.adapters a.adapter").inner_text() == "team/coach"
    assert "prod→v2" in page.locator("table.adapters").inner_text()
    assert "accuracy 0.66" in page.locator("table.adapters").inner_text()

    # Follow the link to the newest version.
    page.click("table.adapters a.version")
    page.wait_for_load_state()
    assert page.url == site + "/v/team/coach@3"
    assert "team/coach" in page.locator("h1").inner_text()
    assert page.locator("code.copy", has_text="spr export team/coach@3").count() == 1
    assert page.locator("figure.loss svg").count() == 0  # v3 recorded no loss curve; v1 did
    page.screenshot(path=str(shots / "ui-version.png"), full_page=True)

    # Its lineage graph: the version, its two parents, the data, the base model and the eval data.
    page.click("text=lineage graph")
    page.wait_for_load_state()
    assert page.url == site + "/v/team/coach@3/lineage"
    graph = page.locator("svg.lineage")
    assert graph.is_visible()
    assert graph.locator("g.node-current").count() == 1
    assert graph.locator("g.node-version").count() == 2
    assert graph.locator("g.node-base").count() == 1 and graph.locator("g.node-dataset").count() == 1
    assert graph.locator("g.node-evaldata").count() == 1
    labels = graph.locator("g.node text").all_text_contents()
    assert "team/coach@1" in labels and "team/coach@2" in labels
    box = graph.bounding_box()
    assert box is not None and box["height"] > 150  # drawn, not an empty element
    page.screenshot(path=str(shots / "ui-lineage.png"), full_page=True)
    graph.locator("a", has=page.locator("g.node-version", has_text="team/coach@1")).click()
    page.wait_for_load_state()
    assert page.url == site + "/v/team/coach@1"
    assert page.locator("figure.loss svg polyline").count() == 1

    # An imported version's lineage is drawn differently (amber, dashed).
    page.goto(site + "/v/hub/imported@1/lineage")
    unverified = page.locator("svg.lineage g.node-unverified rect")
    assert unverified.count() == 1 and unverified.get_attribute("stroke-dasharray") == "6 4"
    assert page.locator("svg.lineage line.edge-unverified").count() == 1

    # Eval scores over time.
    page.goto(site + "/v/team/coach@1")
    page.click("text=eval scores over time")
    page.wait_for_load_state()
    assert page.url == site + "/a/team/coach/evals"
    plot = page.locator("svg.plot")
    assert plot.count() == 1 and plot.locator("circle.point").count() == 3
    assert "accuracy on heldout.jsonl" in page.locator("section.metric h2").inner_text()
    page.screenshot(path=str(shots / "ui-evals.png"), full_page=True)

    # The audit page: the alias moves, filtered by actor; then an audit run on request.
    page.click("header nav >> text=Audit")
    page.wait_for_load_state()
    page.select_option("select[name=actor]", "bob")
    page.click("form.filters button[type=submit]")
    page.wait_for_load_state()
    events = page.locator("table.events tbody tr")
    assert events.count() == 1 and "alias-set" in events.inner_text() and "from=3" in events.inner_text()
    page.click("text=Run an audit now")
    page.wait_for_load_state()
    assert "no damage found" in page.locator("section.findings").inner_text()
    page.screenshot(path=str(shots / "ui-audit.png"), full_page=True)

    # The hostile description and tag never ran, and the page's own policy blocked nothing of ours.
    page.goto(site + "/v/team/coach@1")
    assert "<script>alert(1)</script>" in page.locator("p.description").inner_text()
    assert dialogs == []
    assert not [m for m in console_errors if "Content Security Policy" in m], console_errors
    for name in ("ui-list.png", "ui-version.png", "ui-lineage.png", "ui-evals.png", "ui-audit.png"):
        assert (shots / name).stat().st_size > 5000, name


def test_a_bad_ref_is_a_404_page_in_the_browser(site: str, page: Any) -> None:
    page.goto(site + "/v/team/coach@0")
    assert "/login?next=" in page.url  # not logged in yet: the login form, which leads back
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert page.url == site + "/v/team/coach@0"
    assert page.locator("h1").inner_text() == "Not found"
    response = page.goto(site + "/v/team/..%2F..@1")
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "Not found"
