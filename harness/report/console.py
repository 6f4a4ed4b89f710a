"""The table printed at the end of a run: one row per cell, the headline metrics as columns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from harness.core.contention import busy_reason
from harness.core.terminal import console_text
from harness.results import store

#: metrics shown in the console, in this order, when a run has them
HEADLINE = {"token_ppl": "token ppl", "bits_per_byte": "bits/byte", "word_ppl": "word ppl",
            "tokens_scored": "tokens", "scored_tok_s": "scored tok/s", "prefill_tok_s": "prefill tok/s",
            "decode_tok_s": "decode tok/s", "ttft_s": "TTFT s", "itl_p50_s": "ITL p50 s",
            "mbu": "MBU", "mfu": "MFU",
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


#: the columns of the console's table for each task type (the others: every headline metric it has), so
#: that each table fits a 100-column terminal
FAMILY_COLUMNS = {
    "perplexity": ["token_ppl", "bits_per_byte", "word_ppl", "tokens_scored", "scored_tok_s", "load_s",
                   "model_bytes", "peak_rss_mb", "peak_vram_mb"],
    "kld": ["kld_mean", "kld_p99", "same_top1", "ppl_ratio", "token_ppl", "model_bytes", "peak_rss_mb"],
    "decoding": ["entropy_mean", "max_prob_mean", "distinct_2", "rep_4gram", "len_mean", "ref_nll_mean"],
    "throughput": ["prefill_tok_s", "decode_tok_s", "mbu", "mfu", "ttft_s", "itl_p50_s", "peak_rss_mb",
                   "peak_vram_mb"],
    "tokenization": ["tokens_per_byte", "tokens_per_word", "tokenize_mb_s", "differing_tokens"],
    "lm-eval": ["lmeval_acc", "lmeval_acc_norm", "lmeval_bits_per_byte", "lmeval_word_perplexity", "peak_rss_mb"],
}
#: the column of a cell whose timings were measured on a busy machine (:mod:`harness.core.contention`)
MACHINE = "machine"
#: shown as percentages in the console
FRACTIONS = frozenset({"mbu", "mfu", "same_top1", "lmeval_acc", "lmeval_acc_norm"})
#: shown with their standard error (an accuracy on a few hundred documents is uncertain in its first digit)
WITH_STDERR = frozenset({"token_ppl", "lmeval_acc", "lmeval_acc_norm"})
SHORT = {**HEADLINE, "model_bytes": "model MiB", "kld_mean": "KLD mean", "kld_p99": "KLD p99",
         "same_top1": "same top-1", "ppl_ratio": "PPL ratio", "entropy_mean": "entropy", "max_prob_mean": "max p",
         "distinct_2": "distinct-2", "rep_4gram": "rep 4-gram", "len_mean": "tokens", "ref_nll_mean": "ref NLL",
         "lmeval_acc": "acc", "lmeval_acc_norm": "acc norm", "lmeval_bits_per_byte": "bits/byte",
         "lmeval_word_perplexity": "word ppl"}


def console_value(metric: str, value: float, stderr: float | None = None) -> str:
    """A cell of the console's tables, as narrow as its precision allows: fractions in percent, millions
    with a suffix, small values in three significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if metric in FRACTIONS:
        return f"{value:.1%}" + (f" ± {stderr:.1%}" if stderr is not None and not math.isnan(stderr) else "")
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if 0 < abs(value) < 0.01:
        return f"{value:.3g}"
    return fmt_value(value, stderr)


def task_type(params: str) -> str:
    try:
        return json.loads(params)["task"]["type"]
    except (ValueError, KeyError, TypeError):
        return "other"


def family_tables(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(task type, wide table) per task type of the run: a row per cell that ran, the family's columns it
    has (cells that did not run are listed apart: a reason does not fit a column). Plain loops over the
    columns: a dashboard builds this for every run, and pandas' per-group calls cost ~10x as much."""
    frame = frame[frame["status"] == "ok"]
    types = {p: task_type(p) for p in frame["params"].unique()}
    cells: dict[str, dict] = {}  # cell id -> row, in order
    family: dict[str, str] = {}
    for cell, model, backend, task, params, metric, value, stderr in zip(
            *(frame[c].tolist() for c in ("cell_id", "model", "backend", "task", "params", "metric", "value",
                                          "stderr")), strict=True):
        if cell not in cells:
            cells[cell] = {"model": model, "backend": backend, "task": task}
            family[cell] = types[params]
            if busy_reason(params):
                cells[cell][MACHINE] = "busy"
        if isinstance(metric, str) and metric in FAMILY_COLUMNS.get(family[cell], HEADLINE):
            value = value / 2**20 if metric == "model_bytes" else value
            cells[cell][metric] = console_value(metric, value, stderr if metric in WITH_STDERR else None)
    tables = []
    for name in dict.fromkeys(family.values()):
        rows = [row for cell, row in cells.items() if family[cell] == name]
        columns = [m for m in [*FAMILY_COLUMNS.get(name, list(HEADLINE)), MACHINE] if any(m in row for row in rows)]
        table = pd.DataFrame(rows, columns=["model", "backend", "task", *columns]).fillna("")
        tables.append((name, table.rename(columns=SHORT)))
    return tables


def busy_summary(frame: pd.DataFrame) -> str | None:
    """The run-level line under the tables naming the cells whose timings were measured on a busy machine."""
    ok = frame[frame["status"] == "ok"].drop_duplicates("cell_id")
    busy = [f"{c.model}/{c.backend}/{c.task} ({reason})" for c in ok.itertuples()
            if (reason := busy_reason(c.params))]
    if not busy:
        return None
    return (f"Machine busy during {len(busy)} cell{'s' if len(busy) > 1 else ''}: the timings are flagged "
            f"'{MACHINE}: busy' and compare will not judge them: " + "; ".join(busy))


def print_results(run_dir: Path, console: Console) -> None:
    """One table per task family, then where the run is and how to turn it into a report."""
    frame = store.read_parquet(run_dir / "results.parquet")
    if frame.empty:
        return
    for family, wide in family_tables(frame):
        table = Table(title=f"{console_text(frame['suite'].iloc[0])} — {family}", title_justify="left",
                      box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
        for col in wide.columns:  # a header wider than its values gets a line per word
            header = col if len(col) <= max(len(str(v)) for v in wide[col]) else "\n".join(col.split())
            table.add_column(header, justify="right" if col in SHORT.values() else "left", overflow="fold")
        for row in wide.itertuples(index=False):
            table.add_row(*(console_text(v) for v in row))
        console.print(table)
    busy = busy_summary(frame)
    if busy:
        console.print(console_text(busy), highlight=False, style="yellow", soft_wrap=True)
    for cell in frame[frame["status"] != "ok"].drop_duplicates("cell_id").itertuples():
        console.print(console_text(f"{cell.model}/{cell.backend}/{cell.task}: {cell.status}: {cell.reason}"),
                      highlight=False, style="red")
