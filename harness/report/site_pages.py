"""The dashboard's pages, as HTML text: the overview, a page per metric, the report views, the runs and
machines, each run's report; the script and style they load are files of the package (``assets/``)."""

from __future__ import annotations

import html
from importlib.resources import files

import pandas as pd

from harness.core.format import fmt_value
from harness.report import charts
from harness.report.render import blocks_html, build, name_plots, ok_rows, to_html
from harness.report.site_data import Line, Night, Site, chart_key, env_changes
from harness.report.views import VIEWS, Plot
from harness.tasks import METRICS, TASKS

#: the pages' script and style: files of the package
ASSETS = files("harness.report") / "assets"


def asset(name: str) -> str:
    """One of the site's script and style files (``assets/``), as text."""
    return (ASSETS / name).read_text(encoding="utf-8")


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
        groups.setdefault(site.chart_ids[chart_key(line)], []).append(line)
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
            f"<style>{asset('panels.css').strip()}</style>")
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
