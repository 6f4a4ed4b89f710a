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
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pandas as pd

from harness import __version__
from harness.atomic import atomic_write, atomic_write_text
from harness.errors import UserError

COLUMNS = ["run_id", "cell_id", "suite", "model", "backend", "task", "dataset", "metric", "value", "unit",
           "higher_is_better", "n", "ci_low", "ci_high", "stderr", "status", "reason", "params"]

OK, FAILED, TIMEOUT, SKIPPED = "ok", "failed", "timeout", "skipped"


def cell_record_path(run_dir: Path, cell_id: str, round_: int | None = None) -> Path:
    """A cell's record; an interleaved cell also has one per round until they are merged."""
    return run_dir / "cells" / (f"{cell_id}.json" if round_ is None else f"{cell_id}.round{round_}.json")


def artifact_path(run_dir: Path, cell_id: str, name: str) -> Path:
    return run_dir / "artifacts" / cell_id / name


def read_cell_records(run_dir: Path, order: list[str] | None = None) -> list[dict]:
    """The finished cells' records, in ``order`` of cell ids (suite order) where given; then only those:
    a resumed run whose suite changed a cell's settings leaves the old cell's record behind."""
    records = [json.loads(path.read_text()) for path in (run_dir / "cells").glob("*.json")
               if path.name.count(".") == 1]  # not a job file, not an interleaved round
    if order is None:
        return sorted(records, key=lambda r: r["cell_id"])
    rank = {cell_id: i for i, cell_id in enumerate(order)}
    return sorted((r for r in records if r["cell_id"] in rank), key=lambda r: rank[r["cell_id"]])


def write_cell_record(run_dir: Path, record: dict) -> None:
    path = cell_record_path(run_dir, record["cell_id"], record.get("round"))
    atomic_write_text(path, json.dumps(record, indent=1))


def _rows(record: dict, run_id: str) -> list[dict]:
    cell = record["cell"]
    base = {"run_id": run_id, "cell_id": record["cell_id"], "suite": cell["suite"], "model": cell["model"],
            "backend": cell["backend"], "task": cell["task"], "dataset": cell["dataset"],
            "status": record["status"], "reason": record.get("reason"),
            "params": json.dumps({**record["params"], "resolved": record.get("resolved", {})},
                                 sort_keys=True)}
    if not record.get("measurements"):
        return [{**base, "metric": None, "value": float("nan"), "unit": None, "higher_is_better": None,
                 "n": None, "ci_low": None, "ci_high": None, "stderr": None}]
    return [{**base, **m} for m in record["measurements"]]


def results_frame(records: list[dict], run_id: str) -> pd.DataFrame:
    rows = [row for record in records for row in _rows(record, run_id)]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("value", "ci_low", "ci_high", "stderr"):
        frame[col] = frame[col].astype("float64")
    frame["n"] = frame["n"].astype("Int64")
    frame["higher_is_better"] = frame["higher_is_better"].astype("boolean")
    return frame


def samples_frame(records: list[dict], run_id: str) -> pd.DataFrame:
    rows = [(run_id, r["cell_id"], name, i, float(v))
            for r in records for name, values in r.get("samples", {}).items() for i, v in enumerate(values)]
    return pd.DataFrame(rows, columns=["run_id", "cell_id", "sample", "index", "value"])


def write_tables(run_dir: Path, run_id: str, order: list[str] | None = None) -> pd.DataFrame:
    """Rebuild the run's tables from the cell records; each file is replaced atomically."""
    records = read_cell_records(run_dir, order)
    frame = results_frame(records, run_id)
    atomic_write(run_dir / "results.parquet", lambda p: frame.to_parquet(p, index=False))
    atomic_write(run_dir / "results.csv", lambda p: frame.to_csv(p, index=False))
    samples = samples_frame(records, run_id)
    atomic_write(run_dir / "samples.parquet", lambda p: samples.to_parquet(p, index=False))
    return frame


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


LIBRARIES = ("numpy", "pandas", "pyarrow", "scipy", "pydantic", "llama-cpp-python", "torch", "transformers",
             "accelerate", "bitsandbytes", "gpt4all", "datasets")


def environment() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import psutil

    return {
        "harness_version": __version__, "git_commit": _git_commit(), "python": sys.version.split()[0],
        "platform": platform.platform(), "libraries": versions, "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpu(),
    }


def _gpu() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []


def write_run_json(run_dir: Path, info: dict) -> None:
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, sort_keys=True, default=str))


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
        try:
            tables[name] = json.loads(path.read_text()) if name.endswith(".json") else pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: cannot read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                            ) from None
    missing = set(COLUMNS) - set(tables["results.parquet"].columns)
    if missing:
        raise UserError(f"{run_dir / 'results.parquet'}: missing columns {', '.join(sorted(missing))}")
    return RunTables(run_dir, tables["run.json"], tables["results.parquet"], tables["samples.parquet"])
