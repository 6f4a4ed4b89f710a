"""``harness report RUN_DIR``: ``report.md`` and a self-contained ``report.html`` (plots inlined as PNG).

A report is a header (suite, run, machine), the summary table, the cells that did not run, and then one
section per view (:mod:`harness.report.views`) that applies to the run.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from harness.core import markdown
from harness.core.filenames import file_stems
from harness.core.files import atomic_write, atomic_write_text, check_output
from harness.report.console import busy_summary, family_tables
from harness.report.views import CELL, VIEWS, Plot, Section
from harness.results.records import OK
from harness.results.store import RunTables, read_run


def _span(start: str | None, end: str | None) -> str | None:
    return start and f"{start} – {end or 'unfinished'}"


def build(run: RunTables) -> list[Section]:
    frame = run.results
    env = run.info.get("environment", {})
    facts = [f"Run `{run.run_id}` of suite **{run.suite}**",
             _span(run.info.get("started_at"), run.info.get("ended_at")),
             env.get("git_commit") and f"harness {env.get('harness_version', '?')} at {env['git_commit']}",
             env.get("cpu") and f"{env['cpu']} ({env.get('cpu_count')} CPUs)",
             env.get("memory_gb") and f"{env['memory_gb']} GiB", f"GPU: {', '.join(env.get('gpu') or []) or 'none'}",
             env.get("python") and f"Python {env['python']}",
             ", ".join(f"{k} {v}" for k, v in sorted(env.get("libraries", {}).items()))]
    header = ["; ".join(f for f in facts if f) + "."]
    sections = [Section(f"{run.suite} — {run.run_id}", header)]
    if frame.empty:
        return sections + [Section("Results", ["The run has no cells."])]
    busy = busy_summary(frame)
    sections.append(Section("Results", [block for family, table in family_tables(frame)
                                        for block in (f"**{family}**", table)] + ([busy] if busy else [])))
    not_ok = frame[frame["status"] != OK].drop_duplicates("cell_id")
    if len(not_ok):
        sections.append(Section("Cells that did not run", [not_ok[CELL + ["status", "reason"]]]))
    ok = ok_rows(frame)
    for v in VIEWS.values():
        if v.metrics & set(ok["metric"]):
            sections.append(Section(v.title, v.build(ok)))
    name_plots([block for section in sections for block in section.blocks])
    return sections


def name_plots(blocks: list) -> list:
    """Give each plot among ``blocks`` a file stem of its own (PNG file, chart element id): plot names hold
    task names from the suite (``perplexity-p 1`` and ``perplexity-p_1`` must not share one file)."""
    plots = [b for b in blocks if isinstance(b, Plot)]
    for plot, stem in zip(plots, file_stems([p.name for p in plots]), strict=True):
        plot.name = stem
    return blocks


def ok_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows views read: cells that ran, one metric each, no dataset as ''."""
    return frame[(frame["status"] == OK) & frame["metric"].notna()].astype({"dataset": "object"}).fillna(
        {"dataset": ""})


def _md_table(frame: pd.DataFrame) -> str:
    return markdown.table(frame.astype(str).values.tolist(), list(frame.columns))


def to_markdown(sections: list[Section], files_dir: str) -> str:
    out = []
    for i, section in enumerate(sections):
        out.append(("# " if i == 0 else "## ") + markdown.text(section.title))
        for block in section.blocks:
            if isinstance(block, Plot):
                alt = re.sub(r"([\\\[\]])", r"\\\1", markdown.text(block.caption))
                out.append(f"![{alt}]({files_dir}/{block.name}.png)")
            elif isinstance(block, pd.DataFrame):
                out.append(_md_table(block))
            else:
                out.append(markdown.text(block))
    return "\n\n".join(out) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
         "th{background:#f3f3f3}td{text-align:right}img{max-width:100%}figcaption{color:#555;font-size:13px}")


def html_table(frame: pd.DataFrame) -> str:
    """A table as HTML, empty cells for missing values (``DataFrame.to_html`` takes ~5 ms a table; a
    dashboard writes thousands)."""
    def cell(value) -> str:
        return "" if value is None or (isinstance(value, float) and value != value) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row in frame.itertuples(index=False, name=None))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def png_figure(plot: Plot) -> str:
    """A plot as an inline PNG: the page needs no file and no script."""
    data = base64.b64encode(plot.png).decode("ascii")
    return f"<img alt='{html.escape(plot.caption)}' src='data:image/png;base64,{data}'>"


def blocks_html(blocks: list, plot_html: Callable[[Plot], str] = png_figure) -> list[str]:
    out = []
    for block in blocks:
        if isinstance(block, Plot):
            out.append(f"<figure>{plot_html(block)}<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        elif isinstance(block, pd.DataFrame):
            out.append(html_table(block))
        else:
            out.append(f"<p>{_inline_markdown(block)}</p>")
    return out


def to_html(sections: list[Section], plot_html: Callable[[Plot], str] = png_figure, head: str = "",
            top: str = "") -> str:
    """The report as one page; by default self-contained (plots as PNG). The dashboard passes interactive
    plots, the ``<head>`` lines that load its shared scripts and a link back (``top``)."""
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(sections[0].title)}</title><style>{STYLE}</style>{head}</head><body>{top}"]
    for i, section in enumerate(sections):
        tag = "h1" if i == 0 else "h2"
        out.append(f"<{tag}>{html.escape(section.title)}</{tag}>")
        out += blocks_html(section.blocks, plot_html)
    out.append("</body></html>")
    return "\n".join(out)


def _inline_markdown(text: str) -> str:
    """The markdown a section's text uses (``**bold**``, ```code```) as HTML, everything else escaped."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


FILES_DIR = "report_files"


def write_report(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.md (+ its PNGs under report_files/) and report.html into ``out_dir`` (the run dir)."""
    run = read_run(run_dir)
    if out_dir is not None:  # the run directory itself may be reached through a link (results/latest)
        check_output(out_dir, folder=True)
    out_dir = Path(out_dir or run_dir)
    sections = build(run)
    check_output(out_dir / FILES_DIR, folder=True)
    for block in (b for s in sections for b in s.blocks if isinstance(b, Plot)):  # names: stems (build)
        atomic_write(out_dir / FILES_DIR / f"{block.name}.png", lambda p, png=block.png: p.write_bytes(png))
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(sections, FILES_DIR))
    atomic_write_text(page, to_html(sections))
    return md, page
