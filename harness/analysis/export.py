"""A run's figures in the formats other benchmark tools read.

- ``github-action-benchmark``: its ``customSmallerIsBetter`` / ``customBiggerIsBetter`` tools each read a
  list of ``{name, unit, value, range, extra}``; one JSON object holds both lists under those keys
  (``jq .customBiggerIsBetter`` gives the file for one tool).
- ``pytest-benchmark``: the JSON of ``pytest --benchmark-json``, one benchmark per timing metric of a
  cell, its statistics computed by pytest-benchmark itself from the raw per-repeat samples; a rate such
  as tokens/s becomes its inverse, seconds per token, named ``1/decode_tok_s``, since pytest-benchmark's
  figures are durations.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

import pandas as pd

from harness.analysis.gates import kind_of
from harness.core.errors import require
from harness.core.gates import COUNT, NOISY
from harness.results.records import OK
from harness.results.store import RunTables


def _label(row) -> str:
    return f"{row.model}/{row.backend}/{row.task}"


def _ok_metrics(run: RunTables) -> pd.DataFrame:
    frame = run.results
    return frame[(frame["status"] == OK) & frame["metric"].notna()]


def github_action_benchmark(run: RunTables) -> dict:
    out = {"customSmallerIsBetter": [], "customBiggerIsBetter": []}
    for row in _ok_metrics(run).itertuples():
        if pd.isna(row.higher_is_better) or kind_of(row.metric) == COUNT or not math.isfinite(row.value):
            continue
        entry = {"name": f"{_label(row)} {row.metric}", "unit": row.unit, "value": float(row.value),
                 "extra": f"run {run.run_id}; n={row.n}" if not pd.isna(row.n) else f"run {run.run_id}"}
        if not pd.isna(row.ci_low) and not pd.isna(row.ci_high):
            entry["range"] = f"{row.ci_low:.6g} .. {row.ci_high:.6g}"
        elif not pd.isna(row.stderr):
            entry["range"] = f"± {row.stderr:.6g}"
        out["customBiggerIsBetter" if row.higher_is_better else "customSmallerIsBetter"].append(entry)
    return out


def _durations(metric: str, unit: str, values: list[float]) -> tuple[str, list[float]] | None:
    """The samples as seconds: durations as they are, a rate (x/s) as its inverse ``1/METRIC``."""
    if unit == "s":
        return metric, values
    if unit.endswith("/s") and all(v > 0 for v in values):
        return f"1/{metric}", [1.0 / v for v in values]
    return None


def pytest_benchmark(run: RunTables) -> dict:
    stats_module = require("pytest_benchmark.stats", "test", "the pytest-benchmark export")
    version = require("pytest_benchmark", "test", "the pytest-benchmark export").__version__
    samples = run.samples
    benchmarks = []
    for row in _ok_metrics(run).itertuples():
        if kind_of(row.metric) != NOISY:
            continue
        raw = samples[(samples["cell_id"] == row.cell_id) & (samples["sample"] == row.metric)]
        values = raw.sort_values("index")["value"].tolist() or [float(row.value)]
        converted = _durations(row.metric, row.unit, values)
        if converted is None:
            continue
        name, data = converted
        stats = stats_module.Stats()
        for value in data:
            stats.update(value)
        benchmarks.append({
            "group": f"{row.task}:{name}", "name": f"{_label(row)}:{name}",
            "fullname": f"{run.suite}/{_label(row)}:{name}", "params": None, "param": None,
            "extra_info": {"metric": row.metric, "unit": row.unit, "value": float(row.value), "cell_id": row.cell_id,
                           "params": json.loads(row.params)},
            "options": {"source": "harness", "samples": "per repeat" if len(raw) else "one measurement"},
            "stats": {**stats.as_dict(), "data": data, "iterations": 1},
        })
    env = run.info.get("environment", {})
    commit = env.get("git_commit") or ""
    return {
        "machine_info": {"node": None, "processor": env.get("cpu"), "machine": None, "python_version":
                         env.get("python"), "cpu": {"brand_raw": env.get("cpu"), "count": env.get("cpu_count")},
                         "system": env.get("platform")},
        "commit_info": {"id": commit.removesuffix("-dirty"), "dirty": commit.endswith("-dirty"), "project": "harness"},
        "benchmarks": benchmarks,
        "datetime": run.info.get("started_at") or datetime.now(timezone.utc).isoformat(),
        "version": version,
    }


EXPORTS = {"github-action-benchmark": github_action_benchmark, "pytest-benchmark": pytest_benchmark}
