"""The table printed at the end of a run: one row per cell, the headline metrics as columns."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

#: metrics shown in the console, in this order, when a run has them
HEADLINE = {"token_ppl": "token ppl", "bits_per_byte": "bits/byte", "word_ppl": "word ppl",
            "tokens_scored": "tokens", "scored_tok_s": "scored tok/s", "prefill_tok_s": "prefill tok/s",
            "decode_tok_s": "decode tok/s", "ttft_s": "TTFT s", "itl_p50_s": "ITL p50 s",
            "tokens_per_byte": "tokens/byte", "tokens_per_word": "tokens/word",
            "differing_tokens": "differing tokens", "load_s": "load s",
            "model_bytes": "model bytes", "peak_rss_mb": "peak RSS MiB", "peak_vram_mb": "peak VRAM MiB"}


def fmt_value(value: float, stderr: float | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if stderr is not None and not math.isnan(stderr):
        text += f" ± {stderr:.2g}"
    return text


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Wide view: a row per cell, a column per headline metric (value ± stderr as text)."""
    keys = ["model", "backend", "task", "dataset", "status"]
    rows = []
    for _, group in frame.groupby("cell_id", sort=False):
        first = group.iloc[0]
        row = {k: first[k] for k in keys}
        by_metric = {r.metric: r for r in group.itertuples() if isinstance(r.metric, str)}
        for metric in HEADLINE:
            if metric in by_metric:
                r = by_metric[metric]
                row[HEADLINE[metric]] = fmt_value(r.value, r.stderr if metric == "token_ppl" else None)
        if first["status"] != "ok":
            row["reason"] = first["reason"]
        rows.append(row)
    return pd.DataFrame(rows)


def print_results(run_dir: Path, console: Console) -> None:
    frame = pd.read_parquet(run_dir / "results.parquet")
    if frame.empty:
        return
    wide = summary_frame(frame).fillna("")
    for col in ("dataset", "status"):
        if wide[col].nunique() == 1 and (col != "status" or wide[col].iloc[0] == "ok"):
            wide = wide.drop(columns=col)
    table = Table(title=f"{frame['suite'].iloc[0]} — {run_dir.name}")
    for col in wide.columns:
        table.add_column(col, justify="right" if col in HEADLINE.values() else "left")
    for row in wide.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    console.print(table)
