"""What is known about a timing's noise from one run to the next: the history that calibrates compare's
thresholds (``--history``), and the A/A calibration of ``harness compare --calibrate``.

A run measures the machine as it is while the run lasts. On a shared runner two nights differ by more
than the repeats of one night do (a neighbour's job, another host, its thermal state), so the spread
that decides whether a change is news is the night-to-night one, measured on a history of runs
(:func:`night_to_night`), and it widens a timing's threshold to at least k·σ.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from harness.analysis import compare
from harness.analysis.gates import Gates, kind_of
from harness.analysis.history import noise, run_dirs, series
from harness.core.errors import UserError
from harness.core.gates import EXACT, MIN_RUNS, NOISY
from harness.report import markdown
from harness.report.console import fmt_value
from harness.results.store import RunTables, read_run
from harness.tasks import METRICS


@dataclass(frozen=True)
class Spread:
    """The night-to-night noise of one figure of one cell."""

    relative: float  # standard deviation of the log of one run's figure (:func:`night_to_night`): a ratio's noise
    level: float  # the median of the same runs' figures
    runs: int

    @property
    def sigma(self) -> float:
        """The same spread in the metric's unit, at its level."""
        return self.relative * abs(self.level)

    def widen(self, threshold: float, k: float) -> float:
        """A timing's ratio threshold, at least k of this σ (of the log: a ratio)."""
        return max(threshold, math.exp(k * self.relative))


@dataclass
class History:
    """The runs of a suite that started before the new run, and the spread of each timing they hold."""

    source: str
    runs: list[RunTables]
    spreads: dict[tuple, Spread]  # (model, backend, task, dataset, metric) -> spread

    def spread(self, key: tuple, metric: str) -> Spread | None:
        return self.spreads.get((*key, metric))

    def describe(self) -> str:
        if not self.spreads:
            return (f"Timing thresholds are not calibrated: {self.source} holds {len(self.runs)} runs before the new "
                    f"one, {MIN_RUNS} are needed to measure the night-to-night spread.")
        return (f"Timing thresholds are calibrated on the night-to-night spread of up to {len(self.runs)} runs before "
                f"the new one ({self.source}): each is at least k·σ of it (its gate says by how much).")


#: what the output says when a comparison has no history at all
UNCALIBRATED = ("Timing thresholds are not calibrated (no history: `--history DIR`, or the suite's runs kept in "
                "results/SUITE): a drift of the machine between the two runs can pass them.")


def default_history(base: RunTables) -> list[Path]:
    """``results/SUITE`` (any root): BASE's folder, when it is named after the suite as ``harness run`` lays out."""
    parent = base.path.resolve().parent
    return [parent] if parent.name == base.suite else []


def read_history(paths: list[Path], new: RunTables, gates: Gates) -> History:
    """The history under ``paths`` (run directories or folders of them) for judging NEW."""
    return history_before([read_run(p) for p in run_dirs(paths)], new, gates, ", ".join(map(str, paths)))


def history_before(runs: list[RunTables], new: RunTables, gates: Gates, source: str) -> History:
    """The runs that started before NEW (NEW itself left out), and each timing's spread over the last ``runs``
    of them (the metric's gate); a timing with figures in fewer than MIN_RUNS of those runs has none."""
    other = next((r for r in runs if r.suite != new.suite), None)
    if other is not None:
        raise UserError(f"--history {other.path}: a run of suite '{other.suite}', not of '{new.suite}'")

    def order(run: RunTables) -> tuple[str, str]:
        return run.info.get("started_at") or "", run.run_id

    before = sorted((r for r in runs if r.path.resolve() != new.path.resolve() and order(r) < order(new)), key=order)
    before = before[-max(gates.policy(m).runs for m in METRICS if kind_of(m) == NOISY):]
    spreads = {}
    if before:
        for key, row in series(before).iterrows():
            policy = gates.policy(key[4])
            values = row.iloc[-policy.runs:].dropna().to_numpy(dtype=np.float64)
            if policy.kind == NOISY and len(values) >= MIN_RUNS:
                spreads[key] = Spread(night_to_night(values), float(np.median(values)), len(values))
    return History(source, before, spreads)


def night_to_night(values: np.ndarray) -> float:
    """σ of one run's figure from night to night, relative to its level: of the log of the figures (a timing's
    noise is a ratio: the same whether the machine ran 1.3x slower or faster), from successive differences
    (a slow drift or one step barely moves them). The larger of the robust σ ``harness history`` uses (the
    median difference) and the root mean square of the differences with the largest left out. The median
    alone misses a machine that flips between two speeds every few nights (a VM on another host, a process
    on busier cores): most differences are ~0 and the flips, 30-80%, are outliers to it. Leaving the
    largest out keeps one real step in the history from widening the gate."""
    if np.any(values <= 0):
        return noise(values) / abs(float(np.median(values))) if np.median(values) else math.inf
    logs = np.log(values)
    differences = np.sort(np.abs(np.diff(logs)))[:-1]
    if len(differences) < 2:
        return noise(logs)
    return max(noise(logs), float(np.sqrt(np.mean(differences**2) / 2)))


# --- A/A calibration ----------------------------------------------------------------------------------------

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
    for key, row in series(runs).iterrows():
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
