"""Open report.html in headless Chromium: no JS errors, no network, the front trace has
the right number of points, and the Pareto table sorts on a header click."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LEAD_SCREENSHOT = Path("/tmp/report_screenshot.png")

pytestmark = pytest.mark.browser

# The trace whose uid is given, from every plotly graph div on the page (None when absent).
TRACE_POINTS_JS = """(uid) => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    for (const trace of (gd._fullData || [])) {
      if (trace.uid === uid) { return {x: Array.from(trace.x), y: Array.from(trace.y), name: trace.name}; }
    }
  }
  return null;
}"""
FIRST_COLUMN_JS = "() => Array.from(document.querySelectorAll('#pareto-table tbody tr')).map(r => r.cells[0].innerText)"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield chromium
        chromium.close()


def open_report(browser, path: Path):
    """A page showing ``path``; returns (page, errors, external requests)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    external: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"pageerror: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)

    def guard(route):
        if route.request.url.startswith(("file://", "data:", "blob:")):
            return route.continue_()
        external.append(route.request.url)
        return route.abort()

    page.route("**/*", guard)
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length > 0")
    return page, errors, external


def test_report_renders_without_errors_and_shows_the_front(browser, main_report, main_data, tmp_path):
    page, errors, external = open_report(browser, main_report)
    try:
        front = page.evaluate(TRACE_POINTS_JS, "pareto-front")
        assert front is not None, "no trace with uid 'pareto-front'"
        assert len(front["x"]) == len(main_data.front) == 4
        assert sorted(front["x"]) == sorted(main_data.front["size_bytes"].tolist())
        dominated = page.evaluate(TRACE_POINTS_JS, "dominated")
        assert dominated is not None and len(dominated["x"]) == main_data.counts["dominated"]
        n_plots = page.evaluate("() => document.querySelectorAll('.js-plotly-plot').length")
        assert n_plots >= 6  # front, 3 heatmaps, hypervolume, importances

        before = page.evaluate(FIRST_COLUMN_JS)
        assert before == ["#2", "#1", "#9", "#0 seed"]  # sorted by size
        page.click("#pareto-table th:nth-child(1)")
        ascending = page.evaluate(FIRST_COLUMN_JS)
        assert ascending == ["#0 seed", "#1", "#2", "#9"]
        assert page.get_attribute("#pareto-table th:nth-child(1)", "aria-sort") == "ascending"
        page.click("#pareto-table th:nth-child(1)")
        assert page.evaluate(FIRST_COLUMN_JS) == ascending[::-1]

        page.evaluate("() => window.scrollTo(0, 0)")  # keeps the sticky nav at the top of the shot
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert (tmp_path / "report.png").stat().st_size > 10_000
        shutil.copyfile(tmp_path / "report.png", LEAD_SCREENSHOT)
        assert errors == []
        assert external == []
    finally:
        page.close()


def test_three_objective_report_renders_without_errors(browser, study3, tmp_path, monkeypatch):
    from compresstune.search import report as report_mod
    from compresstune.search.report import _data

    monkeypatch.setattr(_data, "_importances", lambda *a: ({}, "skipped in this test"))
    path = report_mod.write_report(study3, tmp_path / "r")
    page, errors, external = open_report(browser, path)
    try:
        front3d = page.evaluate(TRACE_POINTS_JS, "pareto-front-3d")
        assert front3d is not None and len(front3d["x"]) == len(study3.best_trials)
        assert errors == [] and external == []
    finally:
        page.close()
