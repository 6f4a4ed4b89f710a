"""Tidy results: per-cell records -> one long table (one row per cell and metric), run metadata.

Layout of a run directory::

    run.json            versions, machine, fingerprints, start/end
    results.parquet     one row per (cell, metric); results.csv is the same table
    samples.parquet     raw per-window / per-repeat samples, for significance tests
    cells/<id>.json     each cell's record, written atomically when the cell ends (resume reads these)
    artifacts/<id>/     files a task keeps beside the numbers (generated texts and traces)
    logs/<id>.log       each cell's stdout/stderr
"""

from __future__ import annotations

import json
import numbers
import shlex
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from harness.core.errors import UserError, warn
from harness.core.files import atomic_write_text, atomic_writes, read_json_object
from harness.results.records import CellRecord, damaged_records, read_cell_records, record_files
from harness.results.schema import SCHEMA, migrate

COLUMNS = ["run_id", "cell_id", "suite", "model", "backend", "task", "dataset", "metric", "value", "unit",
           "higher_is_better", "n", "ci_low", "ci_high", "stderr", "status", "reason", "params"]


def _rows(record: CellRecord, run_id: str) -> list[dict]:
    cell = record.cell
    base = {"run_id": run_id, "cell_id": record.cell_id, "suite": cell["suite"], "model": cell["model"],
            "backend": cell["backend"], "task": cell["task"], "dataset": cell["dataset"],
            "status": record.status, "reason": record.reason,
            "params": json.dumps({**record.params, "resolved": record.resolved}, sort_keys=True)}
    if not record.measurements:
        return [{**base, "metric": None, "value": float("nan"), "unit": None, "higher_is_better": None,
                 "n": None, "ci_low": None, "ci_high": None, "stderr": None}]
    return [{**base, **m} for m in record.measurements]


#: the columns of results.parquet that hold numbers (a table edited or written by another tool may hold text)
NUMBERS = ("value", "n", "ci_low", "ci_high", "stderr")


def check_numbers(frame: pd.DataFrame, columns, path: Path) -> None:
    """UserError naming the file and column where a column of numbers holds anything else (``"12.5"``, a
    bool): read silently, it would compare or plot as text."""
    for column in columns:
        series = frame[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            continue
        wrong = [v for v in series.dropna() if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if wrong:
            raise UserError(f"{path}: column '{column}' holds {type(wrong[0]).__name__} values ({wrong[0]!r}), "
                            "expected numbers")


def results_frame(records: list[CellRecord], run_id: str) -> pd.DataFrame:
    rows = [row for record in records for row in _rows(record, run_id)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("value", "ci_low", "ci_high", "stderr"):
        frame[col] = frame[col].astype("float64")
    frame["n"] = frame["n"].astype("Int64")
    frame["higher_is_better"] = frame["higher_is_better"].astype("boolean")
    return frame


def samples_frame(records: list[CellRecord], run_id: str) -> pd.DataFrame:
    rows = [(run_id, r.cell_id, name, i, float(v))
            for r in records for name, values in r.samples.items() for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["run_id", "cell_id", "sample", "index", "value"])


def read_parquet(path: Path) -> pd.DataFrame:
    """A table of a run, read without Arrow's dataset scanner: the tables are small, and under an address-space
    limit (``ulimit -v``) that leaves no room for a thread's stack the scanner waits for ever on a thread that
    never started. Where Arrow still fails to start one, that is the environment's, as a MemoryError."""
    try:
        with pq.ParquetFile(path) as table:
            return table.read(use_threads=False).to_pandas(use_threads=False)
    except pa.ArrowException as exc:
        if "launch worker thread" not in str(exc):
            raise
        raise MemoryError(str(exc)) from None


def write_tables(run_dir: Path, run_id: str, order: list[str] | None = None) -> pd.DataFrame:
    """Rebuild the run's tables from the cell records. The three files are replaced together, only once
    all are written: a full disk leaves the previous complete tables."""
    records = read_cell_records(run_dir, order)
    frame, samples = results_frame(records, run_id), samples_frame(records, run_id)
    atomic_writes([(run_dir / "results.parquet", lambda p: frame.to_parquet(p, index=False)),
                   (run_dir / "results.csv", lambda p: frame.to_csv(p, index=False)),
                   (run_dir / "samples.parquet", lambda p: samples.to_parquet(p, index=False))])
    return frame


def write_run_json(run_dir: Path, info: dict) -> None:
    info = {**info, "schema": SCHEMA}
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, sort_keys=True, default=str))


#: the JSON type of each ``run.json`` key its readers index into (a copied or hand-edited file may hold anything)
RUN_JSON_TYPES = {"run_id": str, "suite": str, "environment": dict, "models": dict, "datasets": dict, "cells": list,
                  "gates": dict, "overrides": list, "started_at": str, "ended_at": str}
_JSON_NAMES = {str: "a string", dict: "an object", list: "an array"}


def read_run_json(path: Path) -> dict:
    """``run.json`` migrated to the current schema, or UserError naming the file (and the key whose value
    is not what the readers expect)."""
    info = migrate(read_json_object(path, "the run's metadata"), path)
    for key, kind in RUN_JSON_TYPES.items():
        value = info.get(key)
        if value is not None and not isinstance(value, kind):
            raise UserError(f"{path}: {key}: expected {_JSON_NAMES[kind]}, got {type(value).__name__} {value!r:.40}")
    if not all(isinstance(c, str) for c in info.get("cells") or []):
        raise UserError(f"{path}: cells: expected an array of cell ids (strings)")
    if not all(isinstance(g, dict) for g in (info.get("gates") or {}).values()):
        raise UserError(f"{path}: gates: expected an object of metric -> {{tolerance, threshold, ...}}")
    return info


@dataclass
class RunTables:
    """A finished run directory as compare, history and report read it."""

    path: Path
    info: dict
    results: pd.DataFrame
    samples: pd.DataFrame

    @property
    def run_id(self) -> str:
        return self.info.get("run_id") or self.path.name

    @property
    def suite(self) -> str | None:
        return self.info.get("suite") or (self.results["suite"].iloc[0] if len(self.results) else None)


def read_run(run_dir: Path) -> RunTables:
    """Read a run directory's tables, or raise UserError naming the file that is missing or unreadable."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a run directory (expected results.parquet and run.json inside)")
    tables = {}
    for name in ("run.json", "results.parquet", "samples.parquet"):
        path = run_dir / name
        if not path.is_file():
            if name == "samples.parquet":
                tables[name] = pd.DataFrame(columns=["run_id", "cell_id", "sample", "index", "value"])
                continue
            raise UserError(f"{path}: not found; is {run_dir} a run directory of `harness run`?")
        if name == "run.json":
            tables[name] = read_run_json(path)
            continue
        try:
            tables[name] = read_parquet(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                            ) from None
    missing = set(COLUMNS) - set(tables["results.parquet"].columns)
    if missing:
        raise UserError(f"{run_dir / 'results.parquet'}: missing columns {', '.join(sorted(missing))}")
    for name, columns in (("results.parquet", NUMBERS), ("samples.parquet", ("index", "value"))):
        check_numbers(tables[name], columns, run_dir / name)
    run = RunTables(run_dir, tables["run.json"], tables["results.parquet"], tables["samples.parquet"])
    for problem in record_problems(run):
        warn(problem)
    return run


def record_problems(run: RunTables) -> list[str]:
    """What the tables may be missing: cell records that cannot be read, and readable records of the
    run's cells that the tables do not hold (tables written before them, or never rebuilt after a failure)."""
    damaged = damaged_records(run.path)
    problems = [f"{exc}: the run's tables may not include it" for exc in damaged]
    broken = {d.path for d in damaged}
    ids = {p.stem for p in record_files(run.path) if p.name.count(".") == 1 and p not in broken}  # cells/ID.json
    absent = sorted(ids & set(run.info.get("cells") or ids) - set(run.results["cell_id"]))
    if absent:
        problems.append(f"{run.path / 'results.parquet'}: lacks {len(absent)} cell(s) whose records are in cells/ "
                        f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}): the tables are older than "
                        f"the records; `harness run SUITE --resume --out {shlex.quote(str(run.path))}` rebuilds them")
    return problems
