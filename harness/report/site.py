"""``harness dashboard DIR... --out site/``: a static site of every metric over the nights.

Pages: an overview (a row per cell, a sparkline per headline metric, the last value and its change since
the previous night and since the last change point), a page per metric (one interactive chart per task:
a line per backend, the CI as a band, change points and machine or library changes marked, a click opens
that night's report), the quantization and decoding views of the latest runs, the runs with their machine
and library versions, and each run's report. Runs of several suites, and the per-backend runs of one
nightly (each job its own run directory), mix: a cell's series is the runs it ran in.

Nothing is fetched: the pages load ``assets/plotly.min.js`` (plotly's own copy, once for the whole site),
``assets/site.js`` and ``assets/site.css`` by relative paths, so the site opens from ``file://``, a CI
artifact or GitHub Pages alike.
"""

from __future__ import annotations

import hashlib
import html
import json
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.analysis.gates import Gates
from harness.analysis.history import KEY, ChangePoint, Trend, history, passes_gate, run_dirs
from harness.core import canary
from harness.core.errors import UserError
from harness.core.filenames import file_stems, stem_map
from harness.core.format import fmt_value
from harness.report import charts
from harness.report.console import task_type
from harness.report.render import blocks_html, build, name_plots, ok_rows, to_html
from harness.report.views import VIEWS, Plot
from harness.results.store import RunTables, read_run
from harness.tasks import METRICS, TASKS

#: the facts of ``run.json``'s environment a change of which is marked (the commit changes every night)
ENV_FACTS = ["cpu", "cpu_count", "memory_gb", "gpu", "platform", "python", "harness_version"]
#: the file that tells a folder is a site this command wrote (so --out may replace it)
MARK = ".harness-dashboard"

#: assets/site.js: draws a chart with the site's plotly once the page is laid out (a chart drawn earlier
#: takes the width its box had then); a click on a night's point opens its report
SITE_JS = """window.harness = {
  plot: function (id, figure) {
    var draw = function () {
      var el = document.getElementById(id);
      Plotly.newPlot(el, figure.data, figure.layout, {displaylogo: false, responsive: true});
      el.on("plotly_click", function (event) {
        var data = event.points[0].customdata;
        if (Array.isArray(data) && typeof data[4] === "string") { window.location.href = data[4]; }
      });
    };
    if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", draw); } else { draw(); }
  }
};
"""
#: the view plots' panels, side by side (the site's pages and the run reports inside it)
PANEL_CSS = ".panels{display:flex;flex-wrap:wrap;gap:1em}.panel{flex:1 1 420px;min-width:360px;height:420px}"
SITE_CSS = PANEL_CSS + """
body{font-family:system-ui,sans-serif;margin:0;color:#1f2328}
main{max-width:1400px;margin:1em auto;padding:0 1em}
nav{display:flex;gap:1.2em;align-items:center;flex-wrap:wrap;padding:.6em 1em;background:#24292f}
nav a,nav summary{color:#fff;text-decoration:none;cursor:pointer}
nav details{position:relative}
nav .menu{position:absolute;z-index:10;background:#fff;border:1px solid #d0d7de;padding:.6em;display:grid;
  grid-template-columns:repeat(3,max-content);gap:.2em 1.2em;max-height:70vh;overflow:auto}
nav .menu a{color:#0969da}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
td,th{border:1px solid #d0d7de;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f6f8fa}
table.overview th.cell{background:none;font-weight:normal;white-space:nowrap}
td.metric{white-space:nowrap}
td.metric svg{display:block}
.last{font-weight:600;margin-right:.3em}
.improved{color:#1a7f37;font-weight:600}.regressed{color:#cf222e;font-weight:600}
.changed{color:#9a6700;font-weight:600}.same{color:#57606a}.busy{color:#57606a;font-style:italic}
td.env-changed{background:#fff8c5}
.chart{height:460px}
.legend{color:#57606a;font-size:13px}
figcaption{color:#57606a;font-size:13px}
"""


def _when(run: RunTables) -> str:
    """The run's start as plotly reads a date (UTC, no zone)."""
    text = run.info.get("started_at")
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(sep=" ", timespec="seconds")


def _env(run: RunTables) -> dict[str, str]:
    env = run.info.get("environment") or {}
    facts = {k: ", ".join(env[k]) or "none" if isinstance(env.get(k), list) else str(env[k])
             for k in ENV_FACTS if env.get(k) is not None}
    facts.update({name: str(version) for name, version in sorted((env.get("libraries") or {}).items())})
    return facts


def env_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two runs' machines and libraries, one phrase per fact ("torch 2.12 → 2.13")."""
    return [f"{k} {before.get(k, '–')} → {after.get(k, '–')}" for k in dict.fromkeys([*before, *after])
            if before.get(k) != after.get(k)]


@dataclass
class Night:
    """A run as the site shows it."""

    run: RunTables
    page: str  # its report, relative to the site's root
    when: str
    env: dict[str, str]

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def commit(self) -> str:
        return str((self.run.info.get("environment") or {}).get("git_commit") or "")

    @property
    def lane(self) -> tuple[str, tuple[str, ...]]:
        """Runs of one suite over the same backends: one nightly job's, whose machine is compared night to
        night (the jobs of a nightly run on different machines)."""
        return str(self.run.suite), tuple(sorted(self.run.results["backend"].dropna().unique()))


@dataclass
class Line:
    """One metric of one cell over the nights it ran."""

    suite: str
    trend: Trend
    nights: list[Night]
    values: list[float]
    low: list[float | None]
    high: list[float | None]
    family: str
    gates: Gates
    #: per night: why the machine was busy during the figure ("" when quiet), which then is never judged
    busy: list[str]
    #: per night: the machine canary's median time (:mod:`harness.core.canary`), for interleaved cells
    canary: list[float | None]

    @property
    def metric(self) -> str:
        return self.trend.metric

    @property
    def cell(self) -> tuple[str, str, str, str]:
        return self.trend.model, self.trend.backend, self.trend.task, self.trend.dataset

    def verdict(self, before: float, after: float) -> str:
        if not passes_gate(before, after, self.gates.policy(self.metric)):
            return "same"
        if self.trend.higher_is_better is None:
            return "changed"
        return "improved" if (after > before) == self.trend.higher_is_better else "regressed"

    def point_of(self, cp: ChangePoint) -> int:
        return next(i for i, n in enumerate(self.nights) if n.run_id == cp.run_id)


@dataclass
class Site:
    nights: list[Night]
    lines: list[Line]
    suites: list[str]
    views: dict[str, str] = field(default_factory=dict)  # report view -> its page's body (views with plots)
    #: metric -> the stem of its page under metrics/ (names from results are never paths as they are)
    metric_pages: dict[str, str] = field(init=False)
    #: (suite, task, dataset) -> the element id of its chart on a metric page, one per key
    chart_ids: dict[tuple[str, str, str], str] = field(init=False)

    def __post_init__(self):
        self.metric_pages = stem_map(sorted({line.metric for line in self.lines}))
        keys = sorted({_chart_key(line) for line in self.lines})
        self.chart_ids = dict(zip(keys, file_stems(["-".join(p for p in key if p) for key in keys]), strict=True))

    def metric_href(self, metric: str, up: str = "") -> str:
        return f"{up}metrics/{self.metric_pages[metric]}.html"

    def chart_href(self, line: Line, up: str = "") -> str:
        """The link to a line's chart on its metric's page (an attribute value: escaped by the caller)."""
        return f"{self.metric_href(line.metric, up)}#{self.chart_ids[_chart_key(line)]}"


def load_nights(paths: list[Path]) -> list[Night]:
    runs, seen = [], set()
    for path in run_dirs(paths):
        if path.resolve() not in seen:
            seen.add(path.resolve())
            runs.append(read_run(path))
    if not runs:
        raise UserError(f"{' '.join(map(str, paths))}: no runs")
    runs.sort(key=lambda r: (r.info.get("started_at") or "", r.run_id))
    # the same run id in two folders gets two pages
    return [Night(run, f"runs/{stem}.html", _when(run), _env(run))
            for run, stem in zip(runs, file_stems([r.run_id for r in runs]), strict=True)]


def _lines(suite: str, nights: list[Night], gates: Gates) -> list[Line]:
    ok = [n.run.results[(n.run.results["status"] == "ok") & n.run.results["metric"].notna()].assign(
        run_id=n.run_id) for n in nights]
    if not any(len(frame) for frame in ok):
        return []
    long = pd.concat(ok, ignore_index=True)
    long["dataset"] = long["dataset"].astype("object").fillna("")
    ci = {key: (lo, hi) for key, lo, hi in zip(
        long[KEY + ["run_id"]].itertuples(index=False, name=None), long["ci_low"], long["ci_high"], strict=True)}
    family = {cell: task_type(params) for cell, params in zip(
        long[KEY[:4]].itertuples(index=False, name=None), long["params"], strict=True)}
    canaries = {params: canary.of_run(params) for params in long["params"].unique()}
    machine = {key: canaries[params] for key, params in zip(
        long[KEY[:4] + ["run_id"]].itertuples(index=False, name=None), long["params"], strict=True)}
    lines = []
    for trend in history([n.run for n in nights], gates):
        have = [i for i, v in enumerate(trend.values) if v is not None]
        key = (trend.model, trend.backend, trend.task, trend.dataset, trend.metric)
        bounds = [ci.get(key + (nights[i].run_id,), (None, None)) for i in have]
        lines.append(Line(suite, trend, [nights[i] for i in have], [trend.values[i] for i in have],
                          charts.numbers(lo for lo, _ in bounds), charts.numbers(hi for _, hi in bounds),
                          family[key[:4]], gates, [trend.busy[i] for i in have],
                          [machine.get(key[:4] + (nights[i].run_id,)) for i in have]))
    return lines


def collect(paths: list[Path], make_gates: Callable[[dict], Gates]) -> Site:
    """The runs under ``paths`` and every metric's series, per suite (gates: the suite's latest run's)."""
    nights = load_nights(paths)
    suites = list(dict.fromkeys(str(n.run.suite) for n in nights))
    lines = []
    for suite in suites:
        mine = [n for n in nights if str(n.run.suite) == suite]
        lines += _lines(suite, mine, make_gates(mine[-1].run.info))
    return Site(nights, lines, suites)


# --- pages --------------------------------------------------------------------------------------------------

def _e(value) -> str:
    """Text or an attribute value (quoted either way) as HTML: names come from results, which travel."""
    return html.escape(str(value), quote=True)


def _pct(before: float, after: float) -> str:
    return f"{(after / before - 1) * 100:+.1f}%" if before else f"{after - before:+.3g}"


def _short(when: str) -> str:
    return when[:16] or "?"


def _nav(site: Site, up: str) -> str:
    links = [("index.html", "Overview")]
    links += [(f"{name}.html", name.capitalize()) for name in site.views]
    links.append(("runs.html", "Runs and machines"))
    options = "".join(f"<a href='{_e(site.metric_href(m, up))}'>{_e(m)}</a>" for m in site.metric_pages)
    return ("<nav>" + "".join(f"<a href='{up}{page}'>{_e(title)}</a>" for page, title in links)
            + f"<details><summary>Metrics ({len(site.metric_pages)})</summary><div class='menu'>{options}</div>"
            "</details></nav>")


def _page(site: Site, title: str, body: str, depth: int = 0, plots: bool = True) -> str:
    up = "../" * depth
    scripts = (f"<script src='{up}assets/plotly.min.js'></script><script src='{up}assets/site.js'></script>"
               if plots else "")
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<link rel='stylesheet' href='{up}assets/site.css'>{scripts}</head>\n<body>{_nav(site, up)}"
            f"<main>\n<h1>{html.escape(title)}</h1>\n{body}\n</main></body></html>\n")


def _run_link(night: Night, up: str = "", text: str | None = None) -> str:
    return f"<a href='{_e(up + night.page)}'>{_e(text or night.run_id)}</a>"


def _label(line: Line, datasets: bool) -> str:
    return "/".join(line.cell[:3]) + (f" on {line.cell[3]}" if datasets and line.cell[3] else "")


def _change_cells(line: Line, up: str) -> str:
    """Last value, change since the previous night and since the last change point, coloured by verdict."""
    last = line.values[-1]
    unit = METRICS[line.metric].unit if line.metric in METRICS else ""
    out = [f"<span class='last' title='{html.escape(unit)}'>{fmt_value(last)}</span>"]
    if len(line.values) > 1:
        prev, busy = line.values[-2], "; ".join(dict.fromkeys(b for b in line.busy[-2:] if b))
        verdict, why = ("busy", f" not comparable (machine busy: {busy})") if busy else (line.verdict(prev, last), "")
        out.append(f"<span class='{verdict}' title='since {_e(line.nights[-2].run_id + why)}'>"
                   f"{_pct(prev, last)}</span>")
    if line.trend.change_points:
        cp = line.trend.change_points[-1]
        night = line.nights[line.point_of(cp)]
        out.append(f"<a class='{line.trend.verdict(cp)} step' href='{_e(up + night.page)}' title='step of "
                   f"{cp.change * 100:+.1f}% from run {html.escape(cp.run_id)}'>{_pct(cp.before, last)} since "
                   f"{html.escape(_short(night.when)[5:10])}</a>")
    return " ".join(out)


def overview(site: Site) -> str:
    parts = []
    steps = sorted(((line, cp) for line in site.lines for cp in line.trend.change_points),
                   key=lambda lc: lc[0].nights[lc[0].point_of(lc[1])].when, reverse=True)
    if steps:
        items = "".join(
            f"<li><span class='{line.trend.verdict(cp)}'>{line.trend.verdict(cp)}</span> "
            f"<a href='{_e(site.chart_href(line))}'>{_e(_label(line, True))} "
            f"{_e(line.metric)}</a> {fmt_value(cp.before)} → {fmt_value(cp.after)} ({cp.change * 100:+.1f}%) from "
            f"{_run_link(line.nights[line.point_of(cp)])}</li>" for line, cp in steps[:30])
        parts.append(f"<h2>Change points, latest first</h2><ul class='steps'>{items}</ul>")
    else:
        parts.append("<p>No change points: no metric stepped and held for two runs.</p>")
    for suite in site.suites:
        runs = [n for n in site.nights if str(n.run.suite) == suite]
        parts.append(f"<h2>{html.escape(suite)}</h2><p>{len(runs)} runs, {_short(runs[0].when)} … "
                     f"{_short(runs[-1].when)}; latest {_run_link(runs[-1])}.</p>")
        lines = [line for line in site.lines if line.suite == suite]
        for family in dict.fromkeys(line.family for line in lines):
            mine = [line for line in lines if line.family == family]
            have = {line.metric for line in mine}
            task = TASKS.get(family)
            order = (task and (task.overview or task.summary)) or sorted(have)
            metrics = [m for m in order if m in have][:4]
            by_cell: dict[tuple, dict[str, Line]] = {}
            for line in mine:
                by_cell.setdefault(line.cell, {})[line.metric] = line
            datasets = len({cell[3] for cell in by_cell}) > 1
            head = "".join(f"<th><a href='{_e(site.metric_href(m))}'>{_e(m)}</a></th>" for m in metrics)
            rows = []
            for cell, per in by_cell.items():
                tds = []
                for m in metrics:
                    line = per.get(m)
                    if line is None:
                        tds.append("<td></td>")
                        continue
                    marks = [(line.point_of(cp), line.trend.verdict(cp)) for cp in line.trend.change_points]
                    spark = charts.sparkline(line.values, marks, f"{m}: {len(line.values)} runs, last "
                                             f"{fmt_value(line.values[-1])}")
                    tds.append(f"<td class='metric'><a href='{_e(site.chart_href(line))}'>{spark}</a>"
                               f"<div>{_change_cells(line, '')}</div></td>")
                label = "/".join(cell[:3]) + (f" on {cell[3]}" if datasets and cell[3] else "")
                rows.append(f"<tr><th class='cell'>{html.escape(label)}</th>{''.join(tds)}</tr>")
            parts.append(f"<h3>{html.escape(family)}</h3><table class='overview'><tr><th>cell</th>{head}</tr>"
                         + "".join(rows) + "</table>")
    legend = ("<p class='legend'>Each cell: the series (dashed: change points), the last value, its change since "
              "the previous night and since the last change point, "
              + ", ".join(f"<span class='{v}'>{v}</span>" for v in ("improved", "regressed", "changed"))
              + " by the metric's direction and gate, <span class='same'>grey</span> within it, <span class='busy'>"
              "italic</span> not comparable (the machine was busy: hover for why).</p>")
    return _page(site, "Nightly dashboard", legend + "\n".join(parts), plots=False)


def _chart_key(line: Line) -> tuple[str, str, str]:
    """The chart a line is drawn in: one per suite, task and dataset."""
    return line.suite, line.trend.task, line.trend.dataset


def _series_traces(line: Line, color: str, name: str) -> list[dict]:
    """A line's traces: its CI band, then its points (hover: run, date, commit, value, CI; click: report)."""
    x = [n.when for n in line.nights]
    custom = []
    for i, night in enumerate(line.nights):
        lo, hi = line.low[i], line.high[i]
        notes = [] if i == 0 else env_changes(line.nights[i - 1].env, night.env)
        busy, machine = line.busy[i], line.canary[i]
        custom.append([html.escape(night.run_id), html.escape(night.commit[:12]) or "?",
                       (f"<b>machine busy</b>: {html.escape(busy)}<br>" if busy else "")
                       + (f"machine canary {machine * 1e3:.3g} ms<br>" if machine else "")
                       + (f"CI [{fmt_value(lo)}, {fmt_value(hi)}]<br>" if lo is not None and hi is not None else ""),
                       "".join(f"<br>changed: {html.escape(n)}" for n in notes), "../" + night.page])
    symbols = ["x" if busy else "diamond" if c[3] else "circle" for busy, c in zip(line.busy, custom, strict=True)]
    traces = [charts.band(x, line.low, line.high, color, name)] if any(v is not None for v in line.low) else []
    traces.append({
        "type": "scatter", "mode": "lines+markers", "x": x, "y": charts.numbers(line.values), "name": html.escape(name),
        "legendgroup": name, "customdata": custom, "line": {"color": color, "width": 1.5},
        "marker": {"color": color, "size": [10 if s == "diamond" else 6 for s in symbols], "symbol": symbols},
        "hovertemplate": f"<b>{html.escape(name)}</b><br>run %{{customdata[0]}}<br>%{{x}}<br>commit "
                         f"%{{customdata[1]}}<br>{html.escape(line.metric)} %{{y:.5g}}<br>%{{customdata[2]}}"
                         "%{customdata[3]}<extra></extra>"})
    return traces


def _change_point_trace(lines: list[Line]) -> dict | None:
    x, y, text, color = [], [], [], []
    for line in lines:
        for cp in line.trend.change_points:
            i = line.point_of(cp)
            verdict = line.trend.verdict(cp)
            x.append(line.nights[i].when)
            y.append(charts.number(line.values[i]))
            color.append(charts.VERDICT_COLOR[verdict])
            text.append(f"<b>{verdict}</b>: {html.escape('/'.join(line.cell[:3]))}<br>{fmt_value(cp.before)} → "
                        f"{fmt_value(cp.after)} ({cp.change * 100:+.1f}%)<br>from run {html.escape(cp.run_id)}")
    if not x:
        return None
    return {"type": "scatter", "mode": "markers", "x": x, "y": y, "name": "change point", "hovertext": text,
            "hovertemplate": "%{hovertext}<extra></extra>",
            "marker": {"symbol": "circle-open", "size": 18, "line": {"width": 2.5}, "color": color}}


def metric_page(site: Site, metric: str) -> str:
    lines = [line for line in site.lines if line.metric == metric]
    record = METRICS.get(metric)
    unit, higher = (record.unit, record.higher_is_better) if record else ("", None)
    policy = lines[0].gates.policy(metric)
    direction = {True: "higher is better", False: "lower is better"}.get(higher, "no direction")
    parts = [f"<p>{html.escape(unit)}; {direction}; a change counts when {html.escape(policy.describe())}. "
             "Drag to zoom (double-click resets), hover a point for its run, click it for the run's report. "
             "Band: the CI; ringed: a change point; diamond: the machine or a library changed before that run; "
             "cross: measured on a busy machine (never judged, left out of the change points)."
             "</p>"]
    groups: dict[str, list[Line]] = {}
    for line in lines:
        groups.setdefault(site.chart_ids[_chart_key(line)], []).append(line)
    several = len(site.suites) > 1
    for chart_id, group in groups.items():
        first = group[0]
        title = first.trend.task + (f" on {first.trend.dataset}" if first.trend.dataset else "") + (
            f" ({first.suite})" if several else "")
        data, values, shapes = [], [], []
        for i, line in enumerate(group):
            data += _series_traces(line, charts.PALETTE[i % len(charts.PALETTE)], "/".join(line.cell[:2]))
            values += line.values
            shapes += [{"type": "line", "xref": "x", "yref": "paper", "y0": 0, "y1": 1,
                        "x0": line.nights[line.point_of(cp)].when, "x1": line.nights[line.point_of(cp)].when,
                        "line": {"dash": "dot", "width": 1,
                                 "color": charts.VERDICT_COLOR[line.trend.verdict(cp)]}}
                       for cp in line.trend.change_points]
        marker = _change_point_trace(group)
        if marker:
            data.append(marker)
        figure = {"data": data, "layout": charts.layout(title, "run start (UTC)", unit, charts.log_helps(values),
                                                        shapes=shapes)}
        steps = [f"<li><span class='{line.trend.verdict(cp)}'>{line.trend.verdict(cp)}</span> "
                 f"{html.escape('/'.join(line.cell[:2]))}: {fmt_value(cp.before)} → {fmt_value(cp.after)} "
                 f"({cp.change * 100:+.1f}%) from {_run_link(line.nights[line.point_of(cp)], '../')}</li>"
                 for line in group for cp in line.trend.change_points]
        parts.append(f"<section id='{_e(chart_id)}'>{charts.chart_div(chart_id + '-chart', figure)}"
                     + (f"<ul class='steps'>{''.join(steps)}</ul>" if steps else "") + "</section>")
    return _page(site, f"{metric}", "\n".join(parts), depth=1)


def _plot_html(plot: Plot) -> str:
    """A view's plot drawn by plotly, its panels side by side."""
    return "<div class='panels'>" + "".join(
        charts.chart_div(f"{plot.name}-{i}", charts.panel_figure(panel), "panel")  # name: a unique stem
        for i, panel in enumerate(plot.panels)) + "</div>"


def _latest_by_lane(site: Site, metrics: frozenset[str]) -> list[Night]:
    latest: dict[tuple, Night] = {}
    for night in site.nights:
        if metrics & set(night.run.results["metric"].dropna()):
            latest[night.lane] = night
    return list(latest.values())


def view_body(site: Site, name: str) -> str | None:
    """The report view ``name`` over the latest run of each lane that has its metrics (None: no plot)."""
    view = VIEWS[name]
    nights = _latest_by_lane(site, view.metrics)
    if not nights:
        return None
    blocks = name_plots(view.build(pd.concat([ok_rows(n.run.results) for n in nights], ignore_index=True)))
    if not any(isinstance(b, Plot) for b in blocks):
        return None
    source = "From " + ", ".join(f"{_run_link(n)} ({html.escape(str(n.run.suite))}, {_short(n.when)})"
                                 for n in nights) + ", the latest run of each job that has these cells."
    return f"<p>{source}</p>" + "\n".join(blocks_html(blocks, _plot_html))


def runs_page(site: Site) -> str:
    """Every run, newest first, per lane: its report, commit, and the machine and libraries, with the facts
    that changed since the lane's previous run marked."""
    lanes: dict[tuple, list[Night]] = {}
    for night in site.nights:
        lanes.setdefault(night.lane, []).append(night)
    parts = []
    for (suite, backends), nights in lanes.items():
        facts = list(dict.fromkeys(k for n in nights for k in n.env))
        varying = [k for k in facts if len({n.env.get(k) for n in nights}) > 1]
        constant = [f"{k} {nights[0].env[k]}" for k in facts if k not in varying and k in nights[0].env]
        rows = []
        for i in range(len(nights) - 1, -1, -1):
            night, before = nights[i], nights[i - 1].env if i else None
            tds = []
            for k in varying:
                value = night.env.get(k, "–")
                if before is not None and before.get(k) != night.env.get(k):
                    tds.append(f"<td class='env-changed' title='was {html.escape(before.get(k, '–'))}'>▲ "
                               f"{html.escape(value)}</td>")
                else:
                    tds.append(f"<td>{html.escape(value)}</td>")
            rows.append(f"<tr><td>{_run_link(night)}</td><td>{_short(night.when)}</td>"
                        f"<td><code>{html.escape(night.commit[:12])}</code></td>{''.join(tds)}</tr>")
        head = "".join(f"<th>{html.escape(k)}</th>" for k in ["run", "start (UTC)", "commit", *varying])
        parts.append(f"<h2>{html.escape(suite)}: {html.escape(', '.join(backends) or 'no cells')}</h2>"
                     + (f"<p>In every run: {html.escape('; '.join(constant))}.</p>" if constant else "")
                     + f"<table class='runs'><tr>{head}</tr>{''.join(rows)}</table>")
    intro = ("<p>Runs of one suite over the same backends are one job's; ▲ marks a machine or library fact that "
             "differs from that job's previous run (hover for the old value).</p>")
    return _page(site, "Runs and machines", intro + "\n".join(parts), plots=False)


def run_page(night: Night) -> str:
    """The run's report (as ``harness report`` writes it) with interactive plots on the site's plotly."""
    head = (f"<script src='../assets/plotly.min.js'></script><script src='../assets/site.js'></script>"
            f"<style>{PANEL_CSS}</style>")
    top = "<p class='back'><a href='../index.html'>← dashboard</a> · <a href='../runs.html'>all runs</a></p>"
    return to_html(build(night.run), _plot_html, head=head, top=top)


def render(site: Site, kept: dict[str, str] | None = None) -> dict[str, str]:
    """Every page of the site: relative path -> HTML; ``kept``: run pages of an earlier build still valid."""
    kept = kept or {}
    for name in ("quantization", "decoding"):
        body = view_body(site, name)
        if body is not None:
            site.views[name] = body
    pages = {f"{name}.html": _page(site, VIEWS[name].title, body) for name, body in site.views.items()}
    pages["runs.html"] = runs_page(site)
    for metric in site.metric_pages:
        pages[site.metric_href(metric)] = metric_page(site, metric)
    for night in site.nights:
        pages[night.page] = kept.get(night.page) or run_page(night)
    pages["index.html"] = overview(site)
    return pages


def plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise UserError("the dashboard needs plotly: pip install -e '.[dashboard]'") from None
    return get_plotlyjs()


def _code_key() -> str:
    """The code a run's page comes from: an earlier page is kept only while it is unchanged."""
    from harness.core import filenames, markdown
    from harness.report import console, render, views

    digest = hashlib.sha256()
    for module in (views, render, console, charts, markdown, filenames, sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _page_keys(site: Site) -> dict[str, str]:
    """Run page -> a hash of what it is made from (the run's tables and the code)."""
    code, keys = _code_key(), {}
    for night in site.nights:
        digest = hashlib.sha256(code.encode())
        for name in ("run.json", "results.parquet"):
            digest.update((night.run.path / name).read_bytes())
        keys[night.page] = digest.hexdigest()
    return keys


def _kept_pages(out: Path, keys: dict[str, str]) -> dict[str, str]:
    """The run pages of the site already in ``out`` whose run and code are unchanged (a night's rebuild
    renders one new report instead of thirty)."""
    try:
        before = json.loads((out / MARK).read_text()).get("run_pages", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {page: (out / page).read_text(encoding="utf-8") for page, key in keys.items()
            if before.get(page) == key and (out / page).is_file()}


def _new_folder_beside(out: Path) -> Path:
    """An empty folder beside ``out`` with the mode a new folder gets (0777 less the umask: a web server may
    read the site), not ``mkdtemp``'s 0700."""
    while True:
        tmp = out.with_name(f".{out.name}.{secrets.token_hex(4)}")
        try:
            tmp.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return tmp


def write_site(paths: list[Path], out: Path, make_gates: Callable[[dict], Gates]) -> Site:
    """Build the site in a folder beside ``out`` and swap it in, so a reader never sees half a site; an
    existing ``out`` is replaced only if it is such a site (or empty), and its unchanged run pages kept."""
    out = Path(out)
    if out.exists() and not (out / MARK).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: exists and is not a site of harness dashboard (no {MARK}); choose another --out")
    site = collect(paths, make_gates)
    keys = _page_keys(site)
    kept = _kept_pages(out, keys)
    js = plotly_js()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_folder_beside(out)
    try:
        (tmp / "assets").mkdir()
        (tmp / "assets" / "plotly.min.js").write_text(js, encoding="utf-8")
        (tmp / "assets" / "site.js").write_text(SITE_JS, encoding="utf-8")
        (tmp / "assets" / "site.css").write_text(SITE_CSS, encoding="utf-8")
        for rel, text in render(site, kept).items():
            path = tmp / rel
            if not path.resolve().is_relative_to(tmp.resolve()):  # every page's name is a stem: never
                raise RuntimeError(f"page {rel!r} would be written outside the site")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        (tmp / MARK).write_text(json.dumps({"note": "written by harness dashboard; replaced by its next run",
                                            "run_pages": keys}, indent=1))
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site
