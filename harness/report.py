"""``harness report RUN_DIR``: ``report.md`` and a self-contained ``report.html`` (plots inlined as PNG).

A report is a header (suite, run, machine), the summary table, the cells that did not run, and then one
section per *view* that applies to the run: a view is a small function in :data:`VIEWS` that turns the
results table into tables and matplotlib figures, and applies when the run has the metrics it plots.
Add a view by decorating a function with :func:`view`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.atomic import atomic_write, atomic_write_text
from harness.results import OK, RunTables, read_run
from harness.summary import fmt_value, summary_frame


@dataclass
class Plot:
    name: str  # file stem of the PNG next to report.md
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)  # str (a paragraph), pd.DataFrame, Plot


@dataclass(frozen=True)
class View:
    name: str
    title: str
    metrics: frozenset[str]  # the view applies when the run has any of them
    build: Callable[[pd.DataFrame], list]


VIEWS: dict[str, View] = {}


def view(name: str, title: str, metrics: set[str]):
    """Register a report view: ``build(ok_rows) -> blocks`` for runs with any of ``metrics``."""
    def register(build):
        VIEWS[name] = View(name, title, frozenset(metrics), build)
        return build
    return register


# --- plotting helpers ---------------------------------------------------------------------------------------

def _figure(ncols: int, width: float = 5.5, height: float = 3.6):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, np.atleast_1d(fig.subplots(1, ncols))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _label(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The shortest name telling the rows apart: the keys that vary (backend always)."""
    varying = [k for k in keys if frame[k].nunique() > 1] or ["backend"]
    return frame[varying].astype(str).agg("/".join, axis=1)


def _bars(ax, frame: pd.DataFrame, metric: str, keys: list[str], title: str) -> None:
    rows = frame[frame["metric"] == metric].reset_index(drop=True)
    labels = _label(rows, keys)
    values = rows["value"].to_numpy(dtype=float)
    low = (values - rows["ci_low"].to_numpy(dtype=float))
    high = (rows["ci_high"].to_numpy(dtype=float) - values)
    yerr = np.nan_to_num(np.vstack([low, high]), nan=0.0).clip(min=0)
    ax.bar(range(len(rows)), values, yerr=yerr, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    unit = rows["unit"].iloc[0] if len(rows) else ""
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    ax.grid(axis="y", alpha=0.3)


def _metric_table(frame: pd.DataFrame, metrics: list[str], keys: list[str]) -> pd.DataFrame:
    wide = frame[frame["metric"].isin(metrics)].pivot_table(index=keys, columns="metric", values="value",
                                                            aggfunc="first", sort=False)
    wide = wide.reindex(columns=[m for m in metrics if m in wide.columns])
    return wide.map(fmt_value).reset_index()


def _find(params: dict, key: str):
    """A setting by name wherever a task or backend put it: top level, then the nested dicts, breadth first."""
    queue = [params]
    while queue:
        node = queue.pop(0)
        if key in node and not isinstance(node[key], dict):
            return node[key]
        queue.extend(v for v in node.values() if isinstance(v, dict))
    return None


CELL = ["model", "backend", "task"]


# --- views --------------------------------------------------------------------------------------------------

@view("perplexity", "Perplexity and bits per byte", {"token_ppl", "bits_per_byte"})
def perplexity_view(ok: pd.DataFrame) -> list:
    cells = ok[ok["metric"].isin(["token_ppl", "bits_per_byte"])]
    blocks = ["Bits per byte compares models with different tokenizers; token perplexity only models that "
              "share one. Error bars: bootstrap CI over windows."]
    for (task, dataset), group in cells.groupby(["task", "dataset"], sort=False, dropna=False):
        fig, axes = _figure(2)
        _bars(axes[0], group, "bits_per_byte", ["model", "backend"], f"bits per byte — {task}")
        _bars(axes[1], group, "token_ppl", ["model", "backend"], f"token perplexity — {task}")
        blocks.append(Plot(f"perplexity-{task}", _png(fig), f"{task} on {dataset}, by backend"))
    blocks.append(_metric_table(ok[ok["cell_id"].isin(cells["cell_id"])],
                                ["token_ppl", "bits_per_byte", "word_ppl", "tokens_scored", "scored_tok_s"], CELL))
    return blocks


@view("throughput", "Throughput", {"decode_tok_s", "prefill_tok_s"})
def throughput_view(ok: pd.DataFrame) -> list:
    cells = ok[ok["cell_id"].isin(ok.loc[ok["metric"] == "decode_tok_s", "cell_id"])]
    blocks = ["Median over repeats; error bars: the distribution-free CI of the median."]
    for task, group in cells.groupby("task", sort=False):
        fig, axes = _figure(3, width=4.5)
        _bars(axes[0], group, "prefill_tok_s", ["model", "backend"], f"prefill — {task}")
        _bars(axes[1], group, "decode_tok_s", ["model", "backend"], f"decode — {task}")
        _bars(axes[2], group, "ttft_s", ["model", "backend"], f"time to first token — {task}")
        for ax in axes[:2]:
            ax.set_yscale("log")
        blocks.append(Plot(f"throughput-{task}", _png(fig), f"{task}: tokens/s (log scale) and TTFT by backend"))
    blocks.append(_metric_table(cells, ["prefill_tok_s", "decode_tok_s", "ttft_s", "itl_p50_s", "itl_p99_s"], CELL))
    return blocks


@view("memory", "Memory and model size", {"peak_rss_mb", "model_bytes"})
def memory_view(ok: pd.DataFrame) -> list:
    per = ok[ok["metric"].isin(["peak_rss_mb", "peak_vram_mb", "model_bytes"])]
    wide = per.pivot_table(index=["model", "backend"], columns="metric", values="value", aggfunc="max", sort=False)
    wide = wide.reset_index()
    labels = _label(wide, ["model", "backend"])
    fig, axes = _figure(1, width=max(5.5, 0.9 * len(wide)))
    x, width = np.arange(len(wide)), 0.4
    series = [("model_bytes", "weights in memory", 1 / 2**20), ("peak_rss_mb", "peak RSS (largest cell)", 1.0)]
    if "peak_vram_mb" in wide:
        series.append(("peak_vram_mb", "peak VRAM", 1.0))
        width = 0.27
    for i, (metric, name, scale) in enumerate(s for s in series if s[0] in wide):
        axes[0].bar(x + (i - (len(series) - 1) / 2) * width, wide[metric] * scale, width, label=name)
    axes[0].set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    axes[0].set_ylabel("MiB")
    axes[0].legend(fontsize=8)
    axes[0].grid(axis="y", alpha=0.3)
    shown = wide.copy()
    if "model_bytes" in shown:
        shown["model_MiB"] = shown.pop("model_bytes") / 2**20
    return [Plot("memory", _png(fig), "weights and peak memory by backend"),
            shown.map(lambda v: fmt_value(v) if isinstance(v, float) else v)]


@view("decoding", "Decoding", {"entropy_mean", "distinct_2"})
def decoding_view(ok: pd.DataFrame) -> list:
    cells = ok[ok["metric"].isin(["entropy_mean", "distinct_2"])].copy()
    cells["temperature"] = [_find(json.loads(p), "temperature") for p in cells["params"]]
    cells = cells.dropna(subset=["temperature"]).astype({"temperature": float})
    if cells.empty:
        return ["No decoding cell records a temperature."]
    fig, axes = _figure(2)
    for ax, metric in zip(axes, ("entropy_mean", "distinct_2"), strict=True):
        rows = cells[cells["metric"] == metric]
        for (model, backend), line in rows.groupby(["model", "backend"], sort=False):
            line = line.sort_values("temperature")
            ax.plot(line["temperature"], line["value"], marker="o", label=f"{model}/{backend}")
        ax.set_xlabel("temperature")
        ax.set_title(metric, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    table = cells.pivot_table(index=["model", "backend", "temperature"], columns="metric", values="value",
                              aggfunc="mean").map(fmt_value).reset_index()
    return [Plot("decoding", _png(fig), "entropy and distinct-2 against temperature, by backend"), table]


@view("quantization", "Quantization: quality against size and speed", {"kld_mean"})
def quantization_view(ok: pd.DataFrame) -> list:
    per = ok.pivot_table(index=["model", "backend"], columns="metric", values="value", aggfunc="max", sort=False)
    per = per.dropna(subset=["kld_mean"]).reset_index()
    labels = _label(per, ["model", "backend"])
    against = [(m, name) for m, name in (("model_bytes", "weights in memory (MiB)"), ("decode_tok_s", "decode tok/s"))
               if m in per and per[m].notna().any()]
    if not against:
        return [_metric_table(ok, ["kld_mean", "kld_p99", "same_top1"], ["model", "backend"])]
    fig, axes = _figure(len(against))
    for ax, (metric, name) in zip(axes, against, strict=True):
        x = per[metric] / (2**20 if metric == "model_bytes" else 1)
        ax.scatter(x, per["kld_mean"])
        for xi, yi, text in zip(x, per["kld_mean"], labels, strict=True):
            ax.annotate(text, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(name)
        ax.set_ylabel("KLD mean vs reference (nats)")
        ax.grid(alpha=0.3)
    return [Plot("quantization", _png(fig), "mean KL divergence from the reference against size and speed"),
            _metric_table(ok, ["kld_mean", "kld_p99", "same_top1", "model_bytes", "decode_tok_s"],
                          ["model", "backend"])]


# --- the document -------------------------------------------------------------------------------------------

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
    sections.append(Section("Results", [summary_frame(frame).fillna("")]))
    not_ok = frame[frame["status"] != OK].drop_duplicates("cell_id")
    if len(not_ok):
        sections.append(Section("Cells that did not run", [not_ok[CELL + ["status", "reason"]]]))
    ok = frame[(frame["status"] == OK) & frame["metric"].notna()].astype({"dataset": "object"}).fillna(
        {"dataset": ""})
    for v in VIEWS.values():
        if v.metrics & set(ok["metric"]):
            sections.append(Section(v.title, v.build(ok)))
    return sections


def _md_table(frame: pd.DataFrame) -> str:
    from tabulate import tabulate

    return tabulate(frame.astype(str).values.tolist(), list(map(str, frame.columns)), tablefmt="github",
                    disable_numparse=True)


def to_markdown(sections: list[Section], files_dir: str) -> str:
    out = []
    for i, section in enumerate(sections):
        out.append(("# " if i == 0 else "## ") + section.title)
        for block in section.blocks:
            if isinstance(block, Plot):
                out.append(f"![{block.caption}]({files_dir}/{block.name}.png)")
            elif isinstance(block, pd.DataFrame):
                out.append(_md_table(block))
            else:
                out.append(block)
    return "\n\n".join(out) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px}"
         "th{background:#f3f3f3}td{text-align:right}img{max-width:100%}figcaption{color:#555;font-size:13px}")


def to_html(sections: list[Section]) -> str:
    out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>",
           f"<title>{html.escape(sections[0].title)}</title><style>{STYLE}</style></head><body>"]
    for i, section in enumerate(sections):
        tag = "h1" if i == 0 else "h2"
        out.append(f"<{tag}>{html.escape(section.title)}</{tag}>")
        for block in section.blocks:
            if isinstance(block, Plot):
                data = base64.b64encode(block.png).decode("ascii")
                out.append(f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                           f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
            elif isinstance(block, pd.DataFrame):
                out.append(block.to_html(index=False, na_rep="", border=0, escape=True))
            else:
                out.append(f"<p>{html.escape(block)}</p>")
    out.append("</body></html>")
    return "\n".join(out)


FILES_DIR = "report_files"


def write_report(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path]:
    """Write report.md (+ its PNGs under report_files/) and report.html into ``out_dir`` (the run dir)."""
    run = read_run(run_dir)
    out_dir = Path(out_dir or run_dir)
    sections = build(run)
    for block in (b for s in sections for b in s.blocks if isinstance(b, Plot)):
        block.name = re.sub(r"[^A-Za-z0-9_.-]", "_", block.name)
        atomic_write(out_dir / FILES_DIR / f"{block.name}.png", lambda p, png=block.png: p.write_bytes(png))
    md, page = out_dir / "report.md", out_dir / "report.html"
    atomic_write_text(md, to_markdown(sections, FILES_DIR))
    atomic_write_text(page, to_html(sections))
    return md, page
