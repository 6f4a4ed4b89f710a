"""The report's views: a view is a small function in :data:`VIEWS` that turns the results table into
tables and plots, and applies when the run has the metrics it plots. Add a view by decorating a function
with :func:`view`; :mod:`harness.report.render` assembles them into documents.

A :class:`Plot` holds the data of its panels, not a drawing: ``report.md`` and ``report.html`` draw it
with matplotlib (:attr:`Plot.png`), the dashboard (:mod:`harness.report.site`) with plotly, interactive.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd

from harness.core.format import fmt_value


@dataclass
class Series:
    """One set of bars, a line or a cloud of points of a panel."""

    name: str  # the legend's entry ("" for none)
    x: list  # categories (bars) or numbers
    y: list[float]
    low: list[float] | None = None  # the CI's ends, absolute
    high: list[float] | None = None
    labels: list[str] | None = None  # each point's name, written beside it and shown on hover
    kind: Literal["bar", "line", "points"] = "bar"
    color: str | None = None
    markers: bool = True  # a line's points marked (a limit line is drawn bare)


@dataclass
class Panel:
    title: str
    series: list[Series]
    xlabel: str = ""
    ylabel: str = ""
    xscale: Literal["linear", "log"] = "linear"
    yscale: Literal["linear", "log", "symlog"] = "linear"  # symlog: log with zero allowed (KLD of a reference)


@dataclass
class Plot:
    name: str  # file stem of the PNG next to report.md
    caption: str
    panels: list[Panel]
    width: float = 5.5  # of one panel's PNG, inches

    @cached_property
    def png(self) -> bytes:
        return _draw_png(self)


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


# --- drawing a plot with matplotlib (report.md, report.html) ------------------------------------------------

def _draw_png(plot: Plot) -> bytes:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(plot.width * len(plot.panels), 3.6), layout="constrained")
    for ax, panel in zip(np.atleast_1d(fig.subplots(1, len(plot.panels))), plot.panels, strict=True):
        _draw_panel(ax, panel)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _draw_panel(ax, panel: Panel) -> None:
    from matplotlib import ticker

    ax.set_xscale(panel.xscale)  # before drawing: setting a scale resets the ticks
    if panel.yscale == "symlog":
        ax.set_yscale("symlog", linthresh=1e-4)
    else:
        ax.set_yscale(panel.yscale)
    bars = [s for s in panel.series if s.kind == "bar"]
    width = 0.8 / max(1, len(bars))
    for series in panel.series:
        y = np.asarray(series.y, dtype=float)
        if series.kind == "bar":
            x = np.arange(len(series.x)) + (bars.index(series) - (len(bars) - 1) / 2) * width
            yerr = None
            if series.low is not None:
                yerr = np.nan_to_num(np.vstack([y - np.asarray(series.low, dtype=float),
                                                np.asarray(series.high, dtype=float) - y]), nan=0.0).clip(min=0)
            ax.bar(x, y, width, yerr=yerr, capsize=3, color=series.color or (None if len(bars) > 1 else "tab:blue"),
                   label=series.name or None)
            ax.set_xticks(np.arange(len(series.x)), series.x, rotation=30, ha="right", fontsize=8)
        elif series.kind == "line":
            ax.plot(series.x, y, marker="o" if series.markers else None, color=series.color,
                    label=series.name or None)
        else:
            ax.scatter(series.x, y, color=series.color, label=series.name or None)
    _annotate(ax, panel)
    if panel.yscale == "log":  # 20, 50, 100 rather than 2×10¹
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(axis="y" if bars else "both", alpha=0.3)
    if any(s.name for s in panel.series):
        ax.legend(fontsize=7)


def _annotate(ax, panel: Panel) -> None:
    """Write each labelled point's name beside it; a label that would overprint one already written (two
    backends at the same speed) moves down a line until it does not."""
    ax.autoscale_view()
    written: list[tuple[float, float, int]] = []  # display position of each label and its length
    for series in panel.series:
        if series.kind == "bar":
            continue
        for xi, yi, text in zip(series.x, series.y, series.labels or [], strict=False):
            px, py = ax.transData.transform((xi, yi))
            dy = 3
            while any(abs(px - qx) < 4 * max(n, len(text)) and abs(py + dy - qy) < 9 for qx, qy, n in written):
                dy -= 10
            written.append((px, py + dy, len(text)))
            ax.annotate(text, (xi, yi), fontsize=7, xytext=(3, dy), textcoords="offset points")


def _label(frame: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The shortest name telling the rows apart: the keys that vary (backend always)."""
    varying = [k for k in keys if frame[k].nunique() > 1] or ["backend"]
    label = frame[varying[0]].astype(str)
    for key in varying[1:]:
        label = label + "/" + frame[key].astype(str)
    return label


def _bars(frame: pd.DataFrame, panels: list[tuple[str, str, str]]) -> list[Panel]:
    """A panel of bars (one per model/backend, CI as error bars) per (metric, title, y scale) the rows have."""
    out = []
    for metric, title, yscale in panels:
        rows = frame[frame["metric"] == metric].reset_index(drop=True)
        if len(rows):
            series = Series("", _label(rows, ["model", "backend"]).tolist(), rows["value"].tolist(),
                            rows["ci_low"].tolist(), rows["ci_high"].tolist())
            out.append(Panel(title, [series], ylabel=rows["unit"].iloc[0] or "", yscale=yscale))
    return out


def _wide(frame: pd.DataFrame, keys: list[str], metrics: list[str], pick: Callable = lambda old, new: old
          ) -> pd.DataFrame:
    """A row per distinct ``keys`` (in order of appearance), a column per metric of ``metrics`` present: the
    first value, or ``pick(old, new)`` of a key's several. A loop, not ``pivot_table``: that costs ~20 ms a
    call, and a dashboard renders every run's report."""
    rows: dict[tuple, dict] = {}
    wanted = set(metrics)
    for key, metric, value in zip(frame[keys].itertuples(index=False, name=None), frame["metric"].tolist(),
                                  frame["value"].tolist(), strict=True):
        if metric in wanted and value == value:  # NaN: not measured
            row = rows.setdefault(key, {})
            row[metric] = pick(row[metric], value) if metric in row else value
    present = [m for m in metrics if any(m in row for row in rows.values())]
    return pd.DataFrame([(*key, *(row.get(m, np.nan) for m in present)) for key, row in rows.items()],
                        columns=keys + present)


def _metric_table(frame: pd.DataFrame, metrics: list[str], keys: list[str]) -> pd.DataFrame:
    wide = _wide(frame, keys, metrics)
    wide[wide.columns[len(keys):]] = wide[wide.columns[len(keys):]].map(fmt_value)
    return wide


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

@view("perplexity", "Perplexity and bits per byte", {"bits_per_byte"})
def perplexity_view(ok: pd.DataFrame) -> list:
    # perplexity cells (a kld cell reports token_ppl too, but no bits per byte: the quantization view's)
    scored = ok[ok["cell_id"].isin(ok.loc[ok["metric"] == "bits_per_byte", "cell_id"])]
    cells = scored[scored["metric"].isin(["token_ppl", "bits_per_byte"])]
    blocks = ["Bits per byte compares models with different tokenizers; token perplexity only models that "
              "share one. Error bars: bootstrap CI over windows."]
    for (task, dataset), group in cells.groupby(["task", "dataset"], sort=False, dropna=False):
        panels = _bars(group, [("bits_per_byte", f"bits per byte — {task}", "linear"),
                               ("token_ppl", f"token perplexity — {task}", "linear")])
        blocks.append(Plot(f"perplexity-{task}", f"{task} on {dataset}, by backend", panels))
    blocks.append(_metric_table(ok[ok["cell_id"].isin(cells["cell_id"])],
                                ["token_ppl", "bits_per_byte", "word_ppl", "tokens_scored", "scored_tok_s"], CELL))
    return blocks


@view("throughput", "Throughput", {"decode_tok_s", "prefill_tok_s"})
def throughput_view(ok: pd.DataFrame) -> list:
    cells = ok[ok["cell_id"].isin(ok.loc[ok["metric"] == "decode_tok_s", "cell_id"])]
    blocks = ["Median over repeats; error bars: the distribution-free CI of the median."]
    for task, group in cells.groupby("task", sort=False):
        panels = _bars(group, [("prefill_tok_s", f"prefill — {task}", "log"),
                               ("decode_tok_s", f"decode — {task}", "log"),
                               ("ttft_s", f"time to first token — {task}", "linear")])
        blocks.append(Plot(f"throughput-{task}", f"{task}: tokens/s (log scale) and TTFT by backend", panels,
                           width=4.5))
    blocks.append(_metric_table(cells, ["prefill_tok_s", "decode_tok_s", "ttft_s", "itl_p50_s", "itl_p99_s",
                                        "decode_gb_s", "mbu", "prefill_flop_s", "mfu"], CELL))
    return blocks


@view("roofline", "Decode against the memory-bandwidth limit", {"mbu"})
def roofline_view(ok: pd.DataFrame) -> list:
    """Decode tok/s against bytes read per token, beside the limit line bandwidth / bytes: a point near
    its line is memory-bound; one far below it spends its time elsewhere (Python per step, dequantizing)."""
    wide = ok[ok["metric"].isin(["decode_bytes_per_token", "decode_tok_s", "mbu", "decode_gb_s"])].pivot_table(
        index=["model", "backend", "task"], columns="metric", values="value", aggfunc="first", sort=False)
    wide = wide.dropna(subset=["mbu"]).reset_index()
    labels = _label(wide, ["model", "backend", "task"])
    x = np.geomspace(wide["decode_bytes_per_token"].min() / 2, wide["decode_bytes_per_token"].max() * 2, 50)
    series = [Series(f"limit at {bandwidth:.1f} GB/s", x.tolist(), (bandwidth * 1e9 / x).tolist(), kind="line",
                     color="tab:red", markers=False)
              for bandwidth in sorted({round(b, 3) for b in wide["decode_gb_s"] / wide["mbu"]})]
    series.append(Series("", wide["decode_bytes_per_token"].tolist(), wide["decode_tok_s"].tolist(),
                         labels=[f"{label} ({mbu:.0%})" for label, mbu in zip(labels, wide["mbu"], strict=True)],
                         kind="points", color="tab:blue"))
    panel = Panel("decode speed against bytes per token", series, xlabel="bytes read per decoded token",
                  ylabel="decode tokens/s", xscale="log", yscale="log")
    return ["Each point: a cell's median decode speed; in brackets its MBU, the fraction of the limit line "
            "(the machine probe's read bandwidth / bytes per token) it reaches.",
            Plot("roofline", "decode tok/s against bytes per token (log-log), with the limit line", [panel],
                 width=7.5)]


@view("memory", "Memory and model size", {"peak_rss_mb", "model_bytes"})
def memory_view(ok: pd.DataFrame) -> list:
    per = ok[ok["metric"].isin(["peak_rss_mb", "peak_vram_mb", "model_bytes"])]
    wide = _wide(per, ["model", "backend"], ["model_bytes", "peak_rss_mb", "peak_vram_mb"], max)
    labels = _label(wide, ["model", "backend"]).tolist()
    series = [Series(name, labels, (wide[metric] * scale).tolist())
              for metric, name, scale in (("model_bytes", "weights in memory", 1 / 2**20),
                                          ("peak_rss_mb", "peak RSS (largest cell)", 1.0),
                                          ("peak_vram_mb", "peak VRAM", 1.0)) if metric in wide]
    plot = Plot("memory", "weights and peak memory by backend", [Panel("", series, ylabel="MiB")],
                width=max(5.5, 0.9 * len(wide)))
    shown = wide.copy()
    if "model_bytes" in shown:
        shown["model_MiB"] = shown.pop("model_bytes") / 2**20
    return [plot, shown.map(lambda v: fmt_value(v) if isinstance(v, float) else v)]


@view("decoding", "Decoding", {"entropy_mean", "distinct_2"})
def decoding_view(ok: pd.DataFrame) -> list:
    """The classic curve: entropy of the sampled distribution and distinct-2 against temperature, from the
    cells whose strategy is temperature alone (no truncation, penalty or beams), one line per backend
    and sampler."""
    cells = ok[ok["metric"].isin(["entropy_mean", "distinct_2"])].copy()
    parsed = {p: json.loads(p).get("resolved", {}).get("task", {}) for p in cells["params"].unique()}
    task = [parsed[p] for p in cells["params"]]
    strategy = [t.get("strategy") or {} for t in task]
    pure = [bool(st) and st.get("top_k") is None and st.get("top_p") is None and not st.get("min_p")
            and st.get("repetition_penalty", 1) == 1 and st.get("beams", 1) == 1 for st in strategy]
    cells["temperature"] = [st.get("temperature") for st in strategy]
    cells["sampler"] = [t.get("sampler") for t in task]
    cells["sweep"] = cells["task"].str.split(".").str[0] + [".chat" if t.get("chat") else "" for t in task]
    cells = cells[pure].astype({"temperature": float})
    swept = cells.groupby(["model", "backend", "sweep", "sampler"])["temperature"].transform("nunique") > 1
    cells = cells[swept]
    if cells.empty:
        return ["No decoding cell sweeps temperature alone."]
    panels = []
    for metric in ("entropy_mean", "distinct_2"):
        rows = cells[cells["metric"] == metric].sort_values("temperature")
        lines = [Series(f"{model}/{backend} {sweep} ({sampler})", line["temperature"].tolist(), line["value"].tolist(),
                        line["ci_low"].tolist(), line["ci_high"].tolist(), kind="line")
                 for (model, backend, sweep, sampler), line in rows.groupby(["model", "backend", "sweep", "sampler"],
                                                                            sort=False)]
        panels.append(Panel(metric + (" (nats, of the distribution sampled from)" if metric == "entropy_mean" else ""),
                            lines, xlabel="temperature"))
    keys = ["model", "backend", "sweep", "sampler", "temperature"]
    table = _metric_table(cells, ["distinct_2", "entropy_mean"], keys).sort_values(keys, ignore_index=True)
    return [Plot("decoding", "entropy and distinct-2 against temperature, by backend and sampler", panels), table]


#: the quantization table's columns: (metric, from the kld cell or the throughput cell; another's where absent)
QUANT_COLUMNS = [("model_bytes", "speed"), ("token_ppl", "kld"), ("ppl_ratio", "kld"), ("kld_mean", "kld"),
                 ("kld_p99", "kld"), ("same_top1", "kld"), ("prefill_tok_s", "speed"), ("decode_tok_s", "speed"),
                 ("peak_rss_mb", "speed"), ("quantize_s", "kld"), ("quantize_peak_rss_mb", "kld")]
#: columns shown only when some variant has them (what making a derived model cost)
WHEN_PRESENT = ("quantize_s", "quantize_peak_rss_mb")
#: accuracies from lm-eval cells, shown beside the KLD: one column per metric and lm-eval cell ("lmeval_acc
#: (acc.harness_cloze)"), its ± stderr in a column of its own
ACCURACY = ("lmeval_acc", "lmeval_acc_norm")
#: the hf backend's dtypes as the family column names an unquantized model
DTYPE_FAMILY = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
#: GGUF types that are the unquantized base of a ladder
GGUF_BASE = ("F32", "F16")
#: one colour per family in the quantization plots (red is the Pareto front's); unquantized bases are gray
FAMILY_COLORS = {"gguf": "tab:blue", "gguf+imatrix": "tab:cyan", "bnb": "tab:orange", "torchao": "tab:green",
                 "quanto": "tab:purple", "hqq": "tab:brown", "gptq": "tab:pink", "awq": "tab:olive"}


def pareto_front(cost: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """Rows no other row beats on both (lower cost and lower loss, one of them strictly)."""
    better = (cost[None, :] <= cost[:, None]) & (loss[None, :] <= loss[:, None]) & (
        (cost[None, :] < cost[:, None]) | (loss[None, :] < loss[:, None]))
    return ~better.any(axis=1)


def weight_types_label(shares: dict | None) -> str:
    """What a GGUF's weights really are ("Q8_0 80% + Q6_K 20%"): K-quant files fall back to other types
    for tensors whose rows are not a multiple of 256, so the name alone can mislead."""
    largest_first = sorted((shares or {}).items(), key=lambda kv: -kv[1])
    return " + ".join(f"{name} {100 * share:.0f}%" for name, share in largest_first if share >= 0.005)


def _settings_label(quantize: dict) -> str:
    """A method's settings as one short label where the model's source string has none (``bits=4 group_size=128``)."""
    return " ".join(f"{k}={v}" for k, v in quantize.items() if k != "method" and not isinstance(v, dict)
                    and v is not None)


def quant_family(params: dict) -> tuple[str, str]:
    """(family, settings) of a cell's model as run: bitsandbytes from the backend's ``quantization`` (it
    quantizes at load), a derived model from its ``quantize`` (settings: the label its source string carries
    after ``#quantize=``), an unquantized model by its precision (the hf backend's dtype, a GGUF base's type)."""
    backend = params.get("backend") or {}
    model = params.get("model") or {}
    at_load = backend.get("quantization")
    if at_load:
        return at_load.get("method", "bnb"), at_load.get("quant_type") or f"int{at_load.get('bits', '?')}"
    quantize = model.get("quantize")
    label = ((params.get("resolved") or {}).get("model") or {}).get("source", "").partition("#quantize=")[2]
    if isinstance(quantize, dict) and quantize.get("method", "gguf") != "gguf":
        return quantize["method"], label or _settings_label(quantize)
    if quantize is None:
        if backend.get("type") == "hf":
            dtype = backend.get("dtype", "float32")
            return DTYPE_FAMILY.get(dtype, dtype), ""
        shares = (params.get("resolved") or {}).get("backend", {}).get("tensor_types") or {}
        return "gguf", (max(shares, key=shares.get) + " as shipped") if shares else "as shipped"
    gguf_type = quantize if isinstance(quantize, str) else quantize.get("type")
    if gguf_type in GGUF_BASE:
        return gguf_type, ""
    with_imatrix = isinstance(quantize, dict) and quantize.get("imatrix")
    return ("gguf+imatrix" if with_imatrix else "gguf"), label or gguf_type


def bits_per_weight(params: dict, model_bytes: float, n_params: float | None) -> tuple[float, float, str]:
    """(whole model, linear layers, of what): the file's bytes where the backend runs the file as stored (a GGUF
    on llama.cpp, an HF-derived quant on the hf backend); else the loaded weights (bitsandbytes quantizes at
    load: its linear layers' share is not reported; a dtype cast is uniform, linear layers included)."""
    backend = params.get("backend") or {}
    quantize = (params.get("model") or {}).get("quantize")
    weights = ((params.get("resolved") or {}).get("model") or {}).get("weights") or {}
    hf_method = isinstance(quantize, dict) and quantize.get("method", "gguf") != "gguf"
    as_stored = not backend.get("quantization") and (backend.get("type") != "hf" or hf_method)
    if as_stored and "bits_per_weight" in weights:
        return weights["bits_per_weight"], weights["linear_bpw"], "file"
    loaded = 8 * model_bytes / n_params if n_params else np.nan
    uniform_cast = backend.get("type") == "hf" and not backend.get("quantization") and not hf_method
    return loaded, loaded if uniform_cast else np.nan, "loaded"


def quantization_table(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (model, backend): its family and settings, bits per weight, size, quality from its
    kld cell, speed and memory from its throughput cell (the kld cell holds the reference too), what making it
    cost, and its Pareto flags."""
    kinds = {cell: json.loads(p).get("task", {}).get("type")
             for cell, p in ok.drop_duplicates("cell_id")[["cell_id", "params"]].itertuples(index=False)}
    ok = ok.assign(kind=ok["cell_id"].map(kinds).map({"kld": "kld", "throughput": "speed"}))
    rows = []
    for (model, backend), group in ok.groupby(["model", "backend"], sort=False):
        if not (group["metric"] == "kld_mean").any():
            continue
        row = {"model": model, "backend": backend}
        for metric, kind in QUANT_COLUMNS:
            values = group[(group["metric"] == metric) & (group["kind"] == kind)]["value"]
            if values.empty:  # a cell of another task that reports it
                values = group[group["metric"] == metric]["value"]
            row[metric] = values.iloc[0] if not values.empty else np.nan
        params = [json.loads(p) for p in group["params"].unique()]
        described = next((p for p in params if (p.get("resolved") or {}).get("model")), params[0])
        row["family"], row["settings"] = quant_family(described)
        reference = next((p["task"]["reference"] for p in params if (p.get("task") or {}).get("reference")), {})
        row["own_reference"] = (reference.get("model"), reference.get("backend")) == (model, backend)
        n_params = next((n for n in (_find(p, "n_params") for p in params) if n), None)
        row["bits_per_weight"], row["linear_bpw"], row["bpw_of"] = bits_per_weight(
            described, row["model_bytes"], n_params)
        types = [p.get("resolved", {}).get("backend", {}).get("tensor_types") for p in params]
        row["weight_types"] = weight_types_label(next((t for t in types if t), None))
        for measured in group[group["metric"].isin(ACCURACY)].itertuples(index=False):
            row[f"{measured.metric} ({measured.task})"] = measured.value
            row[f"± ({measured.metric} {measured.task})"] = measured.stderr
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    accuracy = [c for c in table.columns if c.startswith(ACCURACY) or c.startswith("± (")]
    table["pareto_size"] = pareto_front(table["model_bytes"].to_numpy(), table["kld_mean"].to_numpy())
    if table["decode_tok_s"].notna().all():
        table["pareto_speed"] = pareto_front(-table["decode_tok_s"].to_numpy(), table["kld_mean"].to_numpy())
    columns = [c for c, _ in QUANT_COLUMNS if c not in WHEN_PRESENT or table[c].notna().any()]
    quality_end = columns.index("same_top1") + 1
    return table[["model", "backend", "family", "settings", "weight_types", "bits_per_weight", "linear_bpw",
                  "bpw_of"] + columns[:quality_end] + accuracy + columns[quality_end:]
                 + [c for c in ("pareto_size", "pareto_speed") if c in table] + ["own_reference"]]


def conversion_floor(table: pd.DataFrame) -> float | None:
    """The F32 GGUF's KLD against a reference other than itself (an fp32 HF model): what the conversion to GGUF
    costs before any quantization, below which no GGUF rung can be expected to go."""
    floor = table[(table["family"] == "F32") & ~table["own_reference"]]["kld_mean"]
    return float(floor.min()) if len(floor) else None


#: the quality axes of the quantization plots: (metric, axis label, y scale, lower is better)
QUALITY = [("kld_mean", "KLD mean vs reference (nats)", "symlog", True),
           ("same_top1", "same top-1 token as the reference", "linear", False)]
#: the cost axes: (metric, axis label, scale to the axis's unit)
COSTS = [("model_bytes", "weights in memory (MiB)", 1 / 2**20), ("decode_tok_s", "decode tok/s", 1.0)]


def _front_panels(table: pd.DataFrame, quality: str, ylabel: str, yscale: str, lower_better: bool) -> list[Panel]:
    """One panel per cost (size, speed): the variants as points coloured by family, the Pareto front as a red
    line, and on the KLD panels the conversion floor as a gray line."""
    labels = _label(table, ["model", "backend"]).to_numpy()
    families = table["family"].to_numpy()
    y = table[quality].to_numpy(dtype=float)
    floor = conversion_floor(table) if quality == "kld_mean" else None
    panels = []
    for metric, name, scale in COSTS:
        if table[metric].isna().any():
            continue
        x = table[metric].to_numpy(dtype=float) * scale
        front = pareto_front(x if metric == "model_bytes" else -x, y if lower_better else -y)
        order = np.argsort(x[front])
        # the front first: the families' points are drawn over its markers
        series = [Series("Pareto front", x[front][order].tolist(), y[front][order].tolist(), kind="line",
                         color="tab:red")]
        series += [Series(family, x[families == family].tolist(), y[families == family].tolist(),
                          labels=labels[families == family].tolist(), kind="points",
                          color=FAMILY_COLORS.get(family, "tab:gray"))
                   for family in dict.fromkeys(families)]
        if floor is not None:
            series.append(Series("conversion floor (F32 GGUF)", [x.min(), x.max()], [floor, floor], kind="line",
                                 color="tab:gray", markers=False))
        panels.append(Panel("", series, xlabel=name, ylabel=ylabel, yscale=yscale))
    return panels


@view("quantization", "Quantization: quality against size and speed", {"kld_mean"})
def quantization_view(ok: pd.DataFrame) -> list:
    table = quantization_table(ok)
    if table.empty:
        return ["No variant has a kld cell."]
    plots = [Plot("quantization" + ("" if quality == "kld_mean" else f"-{quality}"),
                  f"{ylabel} against size and decode speed, by family; red: the Pareto front (nothing "
                  "smaller/faster is closer to the reference)", _front_panels(table, quality, ylabel, yscale, lower))
             for quality, ylabel, yscale, lower in QUALITY if table[quality].notna().all()]
    notes = ["Bits per weight (`bpw_of` file): the bytes on disk of every tensor, and of the transformer blocks' "
             "linear layers (packed weights with their scales and zeros), over the full-precision model's "
             "parameters; `loaded`: the weights as the backend holds them (bitsandbytes quantizes at load)."]
    floor = conversion_floor(table)
    if floor is not None:
        notes.append(f"The conversion floor: the F32 GGUF's mean KLD against the reference is {fmt_value(floor)} "
                     "nats, what converting to GGUF costs before any quantization.")
    shown = table.drop(columns="own_reference")
    for col in shown.columns:
        if col not in ("model", "backend", "family", "settings", "weight_types", "bpw_of") \
                and not col.startswith("pareto"):
            shown[col] = shown[col].map(fmt_value)
    return [*plots, *notes, shown]
