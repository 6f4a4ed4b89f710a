"""What is known about a timing's noise from one run to the next: the history that calibrates compare's
thresholds (``--history``). The A/A calibration of ``harness compare --calibrate`` is
:mod:`harness.analysis.calibration`.

A run measures the machine as it is while the run lasts. On a shared runner two nights differ by more
than the repeats of one night do (a neighbour's job, another host, its thermal state), so the spread
that decides whether a change is news is the night-to-night one, measured on a history of runs
(:func:`night_to_night`), and it widens a timing's threshold to at least k·σ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.analysis.gates import Gates, kind_of
from harness.analysis.history import noise, quiet_series, run_dirs
from harness.core.errors import UserError
from harness.core.gates import MIN_RUNS, NOISY
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
        for key, row in quiet_series(before, gates).iterrows():  # a busy night's timing is not the noise
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
