"""The dashboard's drawing: plotly figures written as plain dicts for ``Plotly.newPlot`` (plotly's Python
objects validate every property, which costs seconds over a site's hundreds of traces; the site needs
only plotly's JavaScript), and inline SVG sparklines (a page of them needs no script at all).
"""

from __future__ import annotations

import html
import json
import math

from harness.report.views import Panel

#: matplotlib's colours by the names the views use, and the cycle lines take (matplotlib's tab10)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
TAB = dict(zip(["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                "tab:olive", "tab:cyan"], PALETTE, strict=True))
VERDICT_COLOR = {"improved": "#1a7f37", "regressed": "#cf222e", "changed": "#9a6700", "same": "#57606a"}


def number(value) -> float | None:
    """A value as the page's JSON holds it: six significant digits (the site's size), NaN as null."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return float(f"{float(value):.6g}")


def numbers(values) -> list[float | None]:
    return [number(v) for v in values]


def log_helps(values: list[float | None]) -> bool:
    """A log axis when every value is positive and they span a decade or more (an n-gram's tokens/s beside
    a transformer's)."""
    finite = [v for v in values if v is not None]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= 10


def scale_buttons(log: bool) -> list[dict]:
    """Linear/log buttons above a chart, starting on the axis ``log`` chose."""
    return [{"type": "buttons", "direction": "right", "x": 1, "xanchor": "right", "y": 1.01, "yanchor": "bottom",
             "showactive": True, "active": int(log), "pad": {"r": 0, "t": 0}, "font": {"size": 11},
             "buttons": [{"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                         {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]}]}]


def layout(title: str, xlabel: str, ylabel: str, log: bool, buttons: bool = True, **extra) -> dict:
    return {"title": {"text": html.escape(title), "font": {"size": 14}, "x": 0, "xanchor": "left"},
            "xaxis": {"title": {"text": html.escape(xlabel)}, "zeroline": False},
            "yaxis": {"title": {"text": html.escape(ylabel)}, "type": "log" if log else "linear", "zeroline": False},
            "hovermode": "closest", "margin": {"l": 60, "r": 40, "t": 50, "b": 40}, "modebar": {"orientation": "v"},
            "legend": {"orientation": "h", "yanchor": "top", "y": -0.22},
            "updatemenus": scale_buttons(log) if buttons else [], **extra}


def band(x: list, low: list, high: list, color: str, group: str) -> dict:
    """A CI as a shaded band under its line (drawn first; hidden with the line from the legend)."""
    keep = [i for i, (lo, hi) in enumerate(zip(low, high, strict=True)) if lo is not None and hi is not None]
    xs = [x[i] for i in keep]
    return {"type": "scatter", "mode": "lines", "x": xs + xs[::-1],
            "y": [high[i] for i in keep] + [low[i] for i in keep][::-1], "fill": "toself", "fillcolor": color + "33",
            "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False, "legendgroup": group,
            "name": f"{group} CI"}


def panel_figure(panel: Panel) -> dict:
    """A report view's panel (:class:`harness.report.views.Panel`) as a plotly figure."""
    data = []
    ys = []
    for i, series in enumerate(panel.series):
        color = TAB.get(series.color or "", PALETTE[i % len(PALETTE)])
        y = numbers(series.y)
        ys += y
        hover = [f"{html.escape(label)}<br>" if label else "" for label in (series.labels or [""] * len(y))]
        # plotly reads names, labels and bar categories as its subset of HTML: escaped, as text
        x = numbers(series.x) if series.kind != "bar" else [html.escape(str(v)) for v in series.x]
        trace = {"x": x, "y": y, "name": html.escape(series.name or panel.title), "showlegend": bool(series.name),
                 "marker": {"color": color}, "hovertext": [h + html.escape(series.name) for h in hover],
                 "legendgroup": html.escape(series.name),
                 "hovertemplate": "%{hovertext}<br>x %{x}<br>y %{y:.4g}<extra></extra>"}
        if series.low is not None and any(v is not None for v in numbers(series.low)):
            trace["error_y"] = {"type": "data", "symmetric": False,
                                "array": [None if h is None or v is None else number(h - v)
                                          for h, v in zip(numbers(series.high), y, strict=True)],
                                "arrayminus": [None if lo is None or v is None else number(v - lo)
                                               for lo, v in zip(numbers(series.low), y, strict=True)]}
        if series.kind == "bar":
            trace["type"] = "bar"
        else:
            mode = ("lines+markers" if series.markers else "lines") if series.kind == "line" else "markers"
            trace.update(type="scatter", mode=mode
                         + ("+text" if series.labels else ""), marker={"color": color, "size": 8},
                         line={"color": color}, text=[html.escape(label) for label in series.labels or []] or None,
                         textposition="top right",
                         textfont={"size": 10})
        data.append(trace)
    log = panel.yscale == "log" or (panel.yscale == "symlog" and all(v is None or v > 0 for v in ys))
    bars = any(series.kind == "bar" for series in panel.series)
    fig_layout = layout(panel.title, panel.xlabel, panel.ylabel, log, buttons=not bars, barmode="group")
    if panel.xscale == "log":
        fig_layout["xaxis"]["type"] = "log"
    return {"data": data, "layout": fig_layout}


#: what must not appear as itself in JSON inside ``<script>``: ``</script>`` ends the element and ``<!--``
#: changes how the rest is parsed; JSON's ``\\uXXXX`` gives the same string to the script
SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}


def script_json(value) -> str:
    """JSON safe inside a ``<script>`` element (non-ASCII as ``\\uXXXX`` too: no U+2028 line break)."""
    text = json.dumps(value, separators=(",", ":"), allow_nan=False)
    return text.translate(str.maketrans(SCRIPT_UNSAFE))


def chart_div(chart_id: str, figure: dict, css: str = "chart") -> str:
    return (f"<div class='{html.escape(css)}' id='{html.escape(chart_id)}'></div>"
            f"<script>harness.plot({script_json(chart_id)},{script_json(figure)})</script>")


def sparkline(values: list[float], marks: list[tuple[int, str]], title: str, width: int = 120,
              height: int = 28) -> str:
    """An inline SVG line of ``values``; ``marks``: (index, verdict) of change points, a tick each."""
    pad = 3
    low, high = min(values), max(values)
    span = high - low or 1.0
    step = (width - 2 * pad) / max(1, len(values) - 1)
    xy = [(pad + i * step, height - pad - (v - low) / span * (height - 2 * pad) if high > low else height / 2)
          for i, v in enumerate(values)]
    ticks = "".join(f"<line x1='{xy[i][0]:.1f}' x2='{xy[i][0]:.1f}' y1='0' y2='{height}' "
                    f"stroke='{VERDICT_COLOR[verdict]}' stroke-width='1.5' stroke-dasharray='2,1'/>"
                    for i, verdict in marks)
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
    last = xy[-1]
    return (f"<svg class='spark' width='{width}' height='{height}' viewBox='0 0 {width} {height}' role='img' "
            f"data-points='{len(values)}'><title>{html.escape(title)}</title>{ticks}"
            f"<polyline fill='none' stroke='#57606a' stroke-width='1.2' points='{points}'/>"
            f"<circle cx='{last[0]:.1f}' cy='{last[1]:.1f}' r='2.5' fill='#0969da'/></svg>")
