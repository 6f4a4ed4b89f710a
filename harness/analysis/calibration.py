"""The A/A calibration of ``harness compare --calibrate``: consecutive pairs of runs of an unchanged tree, how
far apart each metric's figures are, how often the current gates flag them, and the gates that would let
them pass."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from harness.analysis import compare
from harness.analysis.gates import Gates
from harness.analysis.history import quiet_series
from harness.analysis.noise import Spread, night_to_night
from harness.core import markdown
from harness.core.format import fmt_value
from harness.core.gates import EXACT, MIN_RUNS, NOISY
from harness.results.store import RunTables


@dataclass
class MetricNoise:
    """One metric of one cell over consecutive pairs of unchanged runs."""

    model: str
    backend: str
    task: str
    dataset: str
    metric: str
    kind: str
    gate: str
    changes: list[float]  # per pair: max / min − 1 of the two runs' figures
    flagged: int  # pairs the gates flag (regressed or improved), uncalibrated
    spread: Spread | None
    suggested: float | None  # a timing's threshold, or a deterministic metric's tolerance when it needs one

    @property
    def label(self) -> str:
        return f"{self.model}/{self.backend}/{self.task}"

    def quantiles(self) -> tuple[float, float]:
        median, p95 = np.percentile(self.changes, [50, 95])
        return float(median), float(p95)


def _apart(a: float, b: float) -> float:
    """How far apart two figures are, as a timing's ratio threshold sees it: max / min − 1."""
    low, high = sorted((abs(a), abs(b)))
    return high / low - 1 if low else (0.0 if high == 0 else math.inf)


def _round_up(x: float, step: float = 0.01) -> float:
    return math.ceil(round(x / step, 6)) * step


@dataclass
class Calibration:
    runs: list[RunTables]
    rows: list[MetricNoise]
    flagged_pairs: list[tuple[str, str, list[str]]]  # (base run, new run, flagged cell metrics) per flagged pair


def calibrate(runs: list[RunTables], gates: Gates) -> Calibration:
    """Every consecutive pair of ``runs`` (oldest first, assumed unchanged): how far apart each metric's
    figures are, how often the gates flag it (without history), and the gate that would let the pairs pass."""
    flagged: dict[tuple, int] = {}
    flagged_pairs = []
    for base, new in pairwise(runs):
        keys = [(r.model, r.backend, r.task, r.dataset or "", r.metric) for r in compare.compare(base, new, gates).rows
                if r.metric and r.verdict in (compare.REGRESSED, compare.IMPROVED)]
        for key in keys:
            flagged[key] = flagged.get(key, 0) + 1
        if keys:
            cells = {"/".join(k[:3]): [] for k in keys}
            for k in keys:
                cells["/".join(k[:3])].append(k[4])
            flagged_pairs.append((base.run_id, new.run_id, [f"{c} {', '.join(m)}" for c, m in cells.items()]))
    rows = []
    for key, row in quiet_series(runs, gates).iterrows():
        values = row.to_numpy(dtype=np.float64)
        changes = [_apart(a, b) for a, b in pairwise(values) if not (math.isnan(a) or math.isnan(b))]
        policy = gates.policy(key[4])
        if not changes or policy.kind not in (NOISY, EXACT):
            continue
        present = values[~np.isnan(values)][-policy.runs:]
        spread = (Spread(night_to_night(present), float(np.median(present)), len(present)) if len(present) >= MIN_RUNS
                  else None)
        p95 = float(np.percentile(changes, 95))
        if policy.kind == NOISY:
            suggested = _round_up(max(1 + p95, spread.widen(1.0, policy.k) if spread else 1.0, 1.01))
        else:
            suggested = _round_up(p95, 0.001) if p95 > policy.tolerance else None
        rows.append(MetricNoise(*key, kind=policy.kind, gate=policy.describe(), changes=changes,
                                flagged=flagged.get(key, 0), spread=spread, suggested=suggested))
    return Calibration(runs, rows, flagged_pairs)


def suggested_gates(rows: list[MetricNoise]) -> dict[str, dict[str, float]]:
    """Per metric (gates are per metric, not per cell): the largest suggestion over its cells."""
    out: dict[str, dict[str, float]] = {}
    for row in rows:
        if row.suggested is None:
            continue
        name = "threshold" if row.kind == NOISY else "tolerance"
        current = out.setdefault(row.metric, {name: row.suggested})
        current[name] = max(current[name], row.suggested)
    return out


def _pct(x: float) -> str:
    return f"{x * 100:.1f}%" if math.isfinite(x) else "∞"


def calibration_markdown(result: Calibration) -> str:
    runs, rows = result.runs, result.rows
    pairs = len(runs) - 1
    lines = [f"**{runs[0].suite}**: {len(runs)} runs, {pairs} consecutive pairs (`{runs[0].run_id}` … "
             f"`{runs[-1].run_id}`), taken as unchanged (A/A). {len(result.flagged_pairs)} of {pairs} pairs flagged "
             "by the current gates without history.", ""]
    lines += [f"- `{base}` → `{new}`: {'; '.join(flags)}" for base, new, flags in result.flagged_pairs]
    lines += ([""] if result.flagged_pairs else []) + [
        "apart: max / min − 1 of a pair's figures, median and 95th percentile over the pairs; σ: the "
        "night-to-night standard deviation of the runs' logs (a ratio's); flagged: pairs the current "
        "gate calls regressed or improved; suggested: a timing's threshold, the larger of 1 + the 95th percentile "
        "and e^(k·σ) (what --history widens it to; k of the metric's gate), or the tolerance a deterministic "
        "metric that moved needs.",
        ""]
    table = []
    for r in rows:
        median, p95 = r.quantiles()
        table.append([r.label, r.metric, _pct(median), _pct(p95), _pct(r.spread.relative) if r.spread else "",
                      r.gate, f"{r.flagged}/{len(r.changes)}", fmt_value(r.suggested) if r.suggested else ""])
    lines.append(markdown.table(table, ["cell", "metric", "apart (median)", "apart (p95)", "σ", "gate", "flagged",
                                        "suggested"]))
    gates = suggested_gates(rows)
    if gates:
        lines += ["", "Suggested `gates:` for the suite (measured on these runs only: calibrate on runs spread over "
                  "the nights and machines the gate will judge):", "", "```yaml", "gates:"]
        lines += [f"  {metric}: {{{', '.join(f'{name}: {value:g}' for name, value in entry.items())}}}"
                  for metric, entry in gates.items()]
        lines.append("```")
    return "\n".join(lines) + "\n"


def _finite_or_none(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def calibration_json(result: Calibration) -> str:
    doc = {"suite": result.runs[0].suite, "runs": [r.run_id for r in result.runs],
           "flagged_pairs": [{"base": b, "new": n, "flagged": f} for b, n, f in result.flagged_pairs],
           "rows": [{"model": r.model, "backend": r.backend, "task": r.task, "dataset": r.dataset or None,
                     "metric": r.metric, "kind": r.kind, "gate": r.gate,
                     "changes": [_finite_or_none(c) for c in r.changes],
                     "median": _finite_or_none(r.quantiles()[0]), "p95": _finite_or_none(r.quantiles()[1]),
                     "flagged": r.flagged, "sigma": r.spread.sigma if r.spread else None,
                     "sigma_relative": _finite_or_none(r.spread.relative) if r.spread else None,
                     "suggested": r.suggested} for r in result.rows],
           "suggested_gates": suggested_gates(result.rows)}
    return json.dumps(doc, indent=2)
