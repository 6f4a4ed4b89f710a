"""The report's views: a view is a small function in :data:`VIEWS` that turns the results table into
tables and matplotlib figures, and applies when the run has the metrics it plots. Add a view by
decorating a function with :func:`view`; :mod:`harness.report.render` assembles them into documents.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.report.console import fmt_value


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

@view("perplexity", "Perplexity and bits per byte", {"bits_per_byte"})
def perplexity_view(ok: pd.DataFrame) -> list:
    # perplexity cells (a kld cell reports token_ppl too, but no bits per byte: the quantization view's)
    scored = ok[ok["cell_id"].isin(ok.loc[ok["metric"] == "bits_per_byte", "cell_id"])]
    cells = scored[scored["metric"].isin(["token_ppl", "bits_per_byte"])]
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
    fig, axes = _figure(1, width=7.5, height=4.5)
    ax = axes[0]
    x = np.geomspace(wide["decode_bytes_per_token"].min() / 2, wide["decode_bytes_per_token"].max() * 2, 50)
    for bandwidth in sorted({round(b, 3) for b in wide["decode_gb_s"] / wide["mbu"]}):
        ax.plot(x, bandwidth * 1e9 / x, color="tab:red", alpha=0.6, label=f"limit at {bandwidth:.1f} GB/s")
    ax.scatter(wide["decode_bytes_per_token"], wide["decode_tok_s"], color="tab:blue", zorder=3)
    for label, px, py, mbu in zip(labels, wide["decode_bytes_per_token"], wide["decode_tok_s"], wide["mbu"],
                                  strict=True):
        ax.annotate(f"{label} ({mbu:.0%})", (px, py), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("bytes read per decoded token")
    ax.set_ylabel("decode tokens/s")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return ["Each point: a cell's median decode speed; in brackets its MBU, the fraction of the limit line "
            "(the machine probe's read bandwidth / bytes per token) it reaches.",
            Plot("roofline", _png(fig), "decode tok/s against bytes per token (log-log), with the limit line")]


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
    """The classic curve: entropy of the sampled distribution and distinct-2 against temperature, from the
    cells whose strategy is temperature alone (no truncation, penalty or beams), one line per backend
    and sampler."""
    cells = ok[ok["metric"].isin(["entropy_mean", "distinct_2"])].copy()
    task = [json.loads(p).get("resolved", {}).get("task", {}) for p in cells["params"]]
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
    fig, axes = _figure(2)
    for ax, metric in zip(axes, ("entropy_mean", "distinct_2"), strict=True):
        rows = cells[cells["metric"] == metric]
        for (model, backend, sweep, sampler), line in rows.groupby(["model", "backend", "sweep", "sampler"],
                                                                   sort=False):
            line = line.sort_values("temperature")
            ax.plot(line["temperature"], line["value"], marker="o", label=f"{model}/{backend} {sweep} ({sampler})")
        ax.set_xlabel("temperature")
        ax.set_title(metric + (" (nats, of the distribution sampled from)" if metric == "entropy_mean" else ""),
                     fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    table = cells.pivot_table(index=["model", "backend", "sweep", "sampler", "temperature"], columns="metric",
                              values="value", aggfunc="first").map(fmt_value).reset_index()
    return [Plot("decoding", _png(fig), "entropy and distinct-2 against temperature, by backend and sampler"),
            table]


#: the quantization table's columns: (metric, from the kld cell or the throughput cell)
QUANT_COLUMNS = [("model_bytes", "speed"), ("token_ppl", "kld"), ("ppl_ratio", "kld"), ("kld_mean", "kld"),
                 ("kld_p99", "kld"), ("same_top1", "kld"), ("prefill_tok_s", "speed"), ("decode_tok_s", "speed"),
                 ("peak_rss_mb", "speed")]


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


def quantization_table(ok: pd.DataFrame) -> pd.DataFrame:
    """One row per variant (model, backend): bits per weight, size, quality from its kld cell, speed and
    memory from its throughput cell (the kld cell holds the reference too), and its Pareto flags."""
    kinds = {cell: json.loads(p).get("task", {}).get("type") for cell, p in zip(ok["cell_id"], ok["params"],
                                                                              strict=True)}
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
        n_params = next((n for n in (_find(p, "n_params") for p in params) if n), None)
        row["bits_per_weight"] = 8 * row["model_bytes"] / n_params if n_params else np.nan
        types = [p.get("resolved", {}).get("backend", {}).get("tensor_types") for p in params]
        row["weight_types"] = weight_types_label(next((t for t in types if t), None))
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["pareto_size"] = pareto_front(table["model_bytes"].to_numpy(), table["kld_mean"].to_numpy())
    if table["decode_tok_s"].notna().all():
        table["pareto_speed"] = pareto_front(-table["decode_tok_s"].to_numpy(), table["kld_mean"].to_numpy())
    return table[["model", "backend", "weight_types", "bits_per_weight"] + [c for c, _ in QUANT_COLUMNS]
                 + [c for c in ("pareto_size", "pareto_speed") if c in table]]


@view("quantization", "Quantization: quality against size and speed", {"kld_mean"})
def quantization_view(ok: pd.DataFrame) -> list:
    table = quantization_table(ok)
    if table.empty:
        return ["No variant has a kld cell."]
    labels = _label(table, ["model", "backend"])
    against = [(m, name, flag) for m, name, flag in (("model_bytes", "weights in memory (MiB)", "pareto_size"),
                                                       ("decode_tok_s", "decode tok/s", "pareto_speed"))
               if flag in table]
    fig, axes = _figure(len(against))
    for ax, (metric, name, flag) in zip(axes, against, strict=True):
        x = table[metric] / (2**20 if metric == "model_bytes" else 1)
        front = table[flag].to_numpy()
        ax.scatter(x[~front], table["kld_mean"][~front], color="tab:gray", label="dominated")
        ax.scatter(x[front], table["kld_mean"][front], color="tab:red", label="Pareto front")
        order = np.argsort(x[front].to_numpy())
        ax.plot(x[front].to_numpy()[order], table["kld_mean"][front].to_numpy()[order], color="tab:red", alpha=0.5)
        for xi, yi, text in zip(x, table["kld_mean"], labels, strict=True):
            ax.annotate(text, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(name)
        ax.set_ylabel("KLD mean vs reference (nats)")
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    shown = table.copy()
    for col in shown.columns:
        if col not in ("model", "backend", "weight_types") and not col.startswith("pareto"):
            shown[col] = shown[col].map(fmt_value)
    return [Plot("quantization", _png(fig), "mean KL divergence from the reference against size and decode speed; "
                 "red: the Pareto front (nothing smaller/faster is closer to the reference)"), shown]
