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
from harness.core.format import fmt_value
from harness.core.terminal import console_text
from harness.results import store
from harness.tasks import METRICS, TASKS
from harness.tasks.base import CELL_METRICS

#: the columns that name a cell in the console's tables; the others are metrics
CELL_KEYS = ("model", "backend", "task")
#: the column of a cell whose timings were measured on a busy machine (:mod:`harness.core.contention`): short,
#: so that a table that gains it still fits 100 columns
MACHINE = "busy"


def console_value(metric: str, value: float, stderr: float | None = None) -> str:
    """A cell of the console's tables, as narrow as its precision allows: fractions in percent, millions
    with a suffix, small values in three significant digits."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    record = METRICS.get(metric)
    if record is not None and record.fraction:
        return f"{value:.1%}" + (f" ± {stderr:.1%}" if stderr is not None and not math.isnan(stderr) else "")
    if abs(value) >= 1e6:
        return f"{value / 1e6:.3g}M"
    if 0 < abs(value) < 0.01:
        return f"{value:.3g}"
    return fmt_value(value, stderr)


def summary_columns(family: str) -> tuple[str, ...]:
    """The metrics a task type's console table shows, in order: its task's :attr:`~harness.tasks.base.Task.summary`,
    else what every cell reports."""
    task = TASKS.get(family)
    return (task.summary if task is not None else ()) or CELL_METRICS


def title(metric: str) -> str:
    record = METRICS.get(metric)
    return metric if record is None else record.title


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
    columns = {name: summary_columns(name) for name in set(types.values())}
    for cell, model, backend, task, params, metric, value, stderr in zip(
            *(frame[c].tolist() for c in ("cell_id", "model", "backend", "task", "params", "metric", "value",
                                          "stderr")), strict=True):
        if cell not in cells:
            cells[cell] = dict(zip(CELL_KEYS, (model, backend, task), strict=True))
            family[cell] = types[params]
            if busy_reason(params):
                cells[cell][MACHINE] = "yes"
        if isinstance(metric, str) and metric in columns[family[cell]]:
            value = value / 2**20 if metric == "model_bytes" else value
            cells[cell][metric] = console_value(metric, value, stderr if METRICS[metric].with_stderr else None)
    tables = []
    for name in dict.fromkeys(family.values()):
        rows = [row for cell, row in cells.items() if family[cell] == name]
        shown = [m for m in [*columns[name], MACHINE] if any(m in row for row in rows)]
        table = pd.DataFrame(rows, columns=[*CELL_KEYS, *shown]).fillna("")
        tables.append((name, table.rename(columns={m: title(m) for m in shown})))
    return tables


def busy_summary(frame: pd.DataFrame) -> str | None:
    """The run-level line under the tables naming the cells whose timings were measured on a busy machine."""
    ok = frame[frame["status"] == "ok"].drop_duplicates("cell_id")
    busy = [f"{c.model}/{c.backend}/{c.task} ({reason})" for c in ok.itertuples()
            if (reason := busy_reason(c.params))]
    if not busy:
        return None
    return (f"Machine busy during {len(busy)} cell{'s' if len(busy) > 1 else ''}: their rows say '{MACHINE}: yes' "
            "and compare will not judge their timings: " + "; ".join(busy))


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
            table.add_column(header, justify="left" if col in (*CELL_KEYS, MACHINE) else "right", overflow="fold")
        for row in wide.itertuples(index=False):
            table.add_row(*(console_text(v) for v in row))
        console.print(table)
    busy = busy_summary(frame)
    if busy:
        console.print(console_text(busy), highlight=False, style="yellow")
    for cell in frame[frame["status"] != "ok"].drop_duplicates("cell_id").itertuples():
        console.print(console_text(f"{cell.model}/{cell.backend}/{cell.task}: {cell.status}: {cell.reason}"),
                      highlight=False, style="red")
