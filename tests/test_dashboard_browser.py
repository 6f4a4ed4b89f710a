"""The dashboard in a real browser (headless Chromium, see tests/browser.py): the pages open from disk with
no console error, every chart is drawn with a point for each night of each series, hovering a point shows
its run, and a link leads to a run's report, whose plots draw from the site's one copy of plotly; names
crafted to run script (in metrics, tasks, models, runs, library versions) run none on any page."""

from __future__ import annotations

import json
import re
import time

import pytest
from browser import chromium, missing
from runs import XSS, dashboard_nights, hostile_site

from harness.cli import main

pytestmark = [pytest.mark.browser, pytest.mark.dashboard]

NIGHTS = 8
STEP_AT = 5

#: per chart element id: what the charts hold (a JSON-able summary read from plotly's own state)
CHARTS_JS = """
return Array.from(document.querySelectorAll('.js-plotly-plot')).map(function (gd) {
  var layers = Array.from(gd.querySelectorAll('.scatterlayer .trace, .barlayer .trace'));
  return {id: gd.id, traces: gd._fullData.map(function (t, i) {
    var group = layers.filter(function (g) {
      return g.__data__ && g.__data__[0] && g.__data__[0].trace.index === i; })[0];
    return {name: t.name, mode: t.mode || t.type, fill: t.fill || null,
            points: (t.y || []).filter(function (v) { return v !== null; }).length,
            drawn: group ? group.querySelectorAll('.point').length : -1};
  })};
});
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    reason = missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("dashboard-browser")
    nights = dashboard_nights(root / "nightly", n=NIGHTS, step_at=STEP_AT)
    assert main(["dashboard", str(root / "nightly"), "--out", str(root / "site")]) == 0
    return root / "site", nights


@pytest.fixture(scope="module")
def browser(site):
    with chromium() as driver:
        yield driver


def _open(driver, path) -> None:
    driver.get(path.as_uri())
    _wait(driver, lambda: driver.execute_script("return document.readyState") == "complete")


def _wait(driver, ready, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = ready()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out on {driver.current_url}")


def _charts(driver, expected: int) -> list[dict]:
    """The page's plotly charts once all ``expected`` are drawn."""
    return _wait(driver, lambda: (c := driver.execute_script(CHARTS_JS)) and len(c) == expected and c)


def _no_console_errors(driver) -> None:
    errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    assert not errors, errors


def _every_series_drawn(chart: dict) -> None:
    for trace in chart["traces"]:
        if trace["fill"] == "toself":  # a CI band: an area, no points
            continue
        assert trace["points"] > 0 and trace["drawn"] == trace["points"], (chart["id"], trace)


def test_overview_draws_a_sparkline_per_metric_of_each_cell(site, browser):
    root, _ = site
    _open(browser, root / "index.html")
    sparks = browser.execute_script("""return Array.from(document.querySelectorAll('svg.spark')).map(function (s) {
        var box = s.getBoundingClientRect();
        return [s.querySelector('polyline').getAttribute('points').split(' ').length, box.width, box.height]; });""")
    # speed: 2 cells x 4 metrics; ppl 1 x 4; decoding 3 x 3 (no ref_nll_mean); kld 4 x 4
    assert len(sparks) == 8 + 4 + 9 + 16
    assert all(n == NIGHTS and w > 50 and h > 10 for n, w, h in sparks)
    _no_console_errors(browser)


def test_metric_page_draws_each_night_and_hover_shows_the_run(site, browser):
    root, nights = site
    _open(browser, root / "metrics" / "decode_tok_s.html")
    charts = {c["id"]: c for c in _charts(browser, 2)}  # the speed cells', and the kld cells' decode figure
    chart = charts["nightly-speed-chart"]
    names = [t["name"] for t in chart["traces"]]
    assert names == ["smollm2/gguf-cpu CI", "smollm2/gguf-cpu", "smollm2/gguf-b CI", "smollm2/gguf-b", "change point"]
    _every_series_drawn(chart)
    assert [t["drawn"] for t in chart["traces"] if t["fill"] != "toself"] == [NIGHTS, NIGHTS, 1]
    _no_console_errors(browser)

    from selenium.webdriver.common.action_chains import ActionChains

    points = browser.execute_script(
        "return Array.from(document.querySelectorAll('#nightly-speed-chart .scatterlayer .trace')).filter("
        "function (g) { return g.__data__[0].trace.name === 'smollm2/gguf-cpu'; })[0].querySelectorAll('path.point');")
    for index in (1, STEP_AT):
        ActionChains(browser).move_to_element(points[index]).perform()
        text = _wait(browser, lambda: " ".join(e.text for e in browser.find_elements(
            "css selector", "#nightly-speed-chart .hoverlayer .hovertext")))
        assert f"run {nights[index].name}" in text and "commit c0ffee" in text and "CI [" in text, text
        ActionChains(browser).move_by_offset(0, 200).perform()  # off the point: the tooltip goes


def test_every_chart_of_every_page_is_drawn(site, browser):
    root, nights = site
    expected = {"quantization.html": 4, "decoding.html": 2, f"runs/{nights[-1].name}.html": None}
    expected.update({f"metrics/{p.stem}.html": None for p in (root / "metrics").iterdir()})
    for page, count in expected.items():
        html = (root / page).read_text()
        count = count or len(re.findall(r"harness\.plot\(", html))
        _open(browser, root / page)
        charts = _charts(browser, count)
        for chart in charts:
            _every_series_drawn(chart)
        _no_console_errors(browser)
    # the Pareto front on size: three variants on it, nf4 off it; the points by family
    _open(browser, root / "quantization.html")
    size = next(c for c in _charts(browser, 4) if c["id"] == "quantization-0")
    assert {t["name"]: t["drawn"] for t in size["traces"]} == {"Pareto front": 3, "gguf": 3, "bnb": 1}


def test_a_link_leads_to_the_run_report_which_uses_the_site_plotly(site, browser):
    root, nights = site
    _open(browser, root / "metrics" / "decode_tok_s.html")
    link = browser.find_element("link text", nights[STEP_AT].name)
    link.click()
    _wait(browser, lambda: browser.current_url.endswith(f"runs/{nights[STEP_AT].name}.html"))
    _wait(browser, lambda: browser.execute_script("return document.readyState") == "complete")
    assert browser.find_element("css selector", "h1").text == f"nightly — {nights[STEP_AT].name}"
    sources = browser.execute_script("return Array.from(document.scripts).map(function (s) { return s.src; })"
                                     ".filter(function (s) { return s; });")
    assert [s.rsplit("/", 2)[-2:] for s in sources] == [["assets", "plotly.min.js"], ["assets", "site.js"]]
    charts = _charts(browser, len(re.findall(r"harness\.plot\(", (root / "runs" / f"{nights[STEP_AT].name}.html")
                                                  .read_text())))
    for chart in charts:
        _every_series_drawn(chart)
    _no_console_errors(browser)
    # back on the overview, the step's link goes to the same report
    _open(browser, root / "index.html")
    step = browser.find_element("css selector", "a.step")
    assert json.dumps(step.get_attribute("href")).endswith(f'runs/{nights[STEP_AT].name}.html"')


def test_no_crafted_name_runs_script_on_any_page(tmp_path, browser):
    """Every page of a site built from runs whose names hold markup (an <img onerror>, a </script> that
    would end a chart's figure): opened and drawn, the payloads set nothing and the names show as text."""
    pages = hostile_site(tmp_path)
    out = tmp_path / "site"
    for page in pages:
        _open(browser, page)
        charts = len(re.findall(r"harness\.plot\(", page.read_text()))
        if charts:
            _charts(browser, charts)  # drawn: names reached plotly's legends, titles and hover texts
        assert browser.execute_script("return typeof window.__pwned") == "undefined", page
        assert not browser.find_elements("css selector", "img"), page
        _no_console_errors(browser)
    _open(browser, out / "index.html")
    menu = [a.get_attribute("textContent") for a in browser.find_elements("css selector", "nav .menu a")]
    assert XSS in menu and "../../../SHARD_ESCAPE" in menu  # the names, as text
