"""``harness history DIR...``: every metric of every cell across many runs, and the runs where it stepped.

A nightly series is noisy; what matters is a step that persists, not one bad night. Change points are
found by binary segmentation on the L1 cost (distance to each segment's median, so one outlier barely
moves a segment), every segment at least ``MIN_SEGMENT`` runs long, so a single night can never be a
segment of its own. A split is kept only when

1. the step between the segments' medians passes the metric's gate (:mod:`harness.analysis.gates`: the ratio
   threshold of a timing, the tolerance of a deterministic metric),
2. it is large against the series' own noise (``Z`` robust standard deviations of its night-to-night
   differences), and
3. it persists: a two-run segment (whose median is the mean of its runs, so one outlier could make the
   level) has both runs on its side of the midpoint between the levels.

A step in the last run is therefore reported the night after, once it has held for two runs. A timing
measured on a busy machine (:mod:`harness.core.contention`) is shown but left out of the change points, as
it is of the night-to-night spread (:mod:`harness.analysis.noise`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis.gates import Gates
from harness.core import markdown
from harness.core.contention import busy_reason
from harness.core.errors import UserError
from harness.core.format import fmt_value
from harness.core.gates import COUNT, EXACT, NOISY, Policy
from harness.results.records import OK
from harness.results.store import RunTables, read_run

MIN_SEGMENT = 2
#: robust standard deviations a step must exceed
Z = 3.0
#: 1 / Φ⁻¹(3/4): the median absolute deviation of a normal sample, scaled to its standard deviation
MAD_TO_SIGMA = 1.4826

KEY = ["model", "backend", "task", "dataset", "metric"]


@dataclass
class ChangePoint:
    index: int  # position in the series of the first run after the step
    run_id: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after / self.before - 1 if self.before else math.inf


def _l1_cost(x: np.ndarray) -> float:
    return float(np.abs(x - np.median(x)).sum()) if len(x) else 0.0


def _best_split(x: np.ndarray, min_size: int) -> int | None:
    """The split k (x[:k] | x[k:]) with the lowest total L1 cost, earliest on ties."""
    best, best_cost = None, _l1_cost(x)
    for k in range(min_size, len(x) - min_size + 1):
        cost = _l1_cost(x[:k]) + _l1_cost(x[k:])
        if cost < best_cost - 1e-12 * max(1.0, best_cost):
            best, best_cost = k, cost
    return best


def passes_gate(before: float, after: float, policy: Policy) -> bool:
    """Whether a move from ``before`` to ``after`` is large enough to count (the ratio or the tolerance;
    significance is the caller's)."""
    if policy.kind in (EXACT, COUNT):
        return abs(after - before) > max(policy.tolerance * abs(before), policy.abs_tolerance)
    low, high = sorted((before, after))
    return low > 0 and high / low >= policy.threshold


def noise(x: np.ndarray) -> float:
    """Robust standard deviation of a series' night-to-night noise, from its successive differences (a
    step moves only one of them, a spike two)."""
    if len(x) < 3:
        return 0.0
    return MAD_TO_SIGMA * float(np.median(np.abs(np.diff(x)))) / math.sqrt(2)


def _real_step(left: np.ndarray, right: np.ndarray, policy: Policy, sigma: float) -> bool:
    before, after = float(np.median(left)), float(np.median(right))
    if not passes_gate(before, after, policy):
        return False
    if abs(after - before) <= Z * sigma:
        return False
    # a two-run segment's median is the mean of its runs, so one outlier could make the level on its own:
    # both runs must lie past the midpoint between the levels (a longer segment's median ignores one)
    mid, up = (before + after) / 2, after > before
    return all(np.all(seg < mid if side_low else seg > mid) for seg, side_low in ((left, up), (right, not up))
               if len(seg) == 2)


def change_points(values: np.ndarray, policy: Policy, min_size: int = MIN_SEGMENT) -> list[int]:
    """Indices where a persistent step starts (binary segmentation; see the module docstring)."""
    x = np.asarray(values, dtype=np.float64)
    found: list[int] = []
    sigma = noise(x)

    def split(lo: int, hi: int) -> None:
        if hi - lo < 2 * min_size:
            return
        k = _best_split(x[lo:hi], min_size)
        if k is None or not _real_step(x[lo:lo + k], x[lo + k:hi], policy, sigma):
            return
        found.append(lo + k)
        split(lo, lo + k)
        split(lo + k, hi)

    split(0, len(x))
    return sorted(found)


def run_dirs(paths: list[Path]) -> list[Path]:
    """Each path is a run directory, or a folder of them (``results/SUITE``)."""
    out = []
    for path in paths:
        if (path / "results.parquet").is_file():
            out.append(path)
        elif path.is_dir() and any(p.is_dir() and (p / "results.parquet").is_file() for p in path.iterdir()):
            out.extend(sorted(p for p in path.iterdir() if (p / "results.parquet").is_file()))
        else:
            raise UserError(f"{path}: not a run directory nor a folder of run directories (no results.parquet)")
    return out


def load_runs(paths: list[Path]) -> list[RunTables]:
    """The runs in the order they started; all of one suite."""
    runs = sorted((read_run(p) for p in run_dirs(paths)), key=lambda r: (r.info.get("started_at") or "", r.run_id))
    if len(runs) < 2:
        raise UserError(f"{' '.join(map(str, paths))}: history needs at least two runs, found {len(runs)}")
    suites = {r.suite for r in runs}
    if len(suites) > 1:
        raise UserError("history reads runs of one suite; found " + ", ".join(
            f"'{s}' ({next(r.path for r in runs if r.suite == s)})" for s in sorted(suites, key=str)))
    return runs


def series(runs: list[RunTables]) -> pd.DataFrame:
    """One row per (cell names, metric), one column per run (in order), the ok cells' values."""
    frames = []
    for run in runs:
        ok = run.results[(run.results["status"] == OK) & run.results["metric"].notna()]
        frame = ok.assign(run_id=run.run_id, dataset=ok["dataset"].astype("object").fillna(""))
        frames.append(frame[KEY + ["run_id", "value", "unit", "higher_is_better"]])
    long = pd.concat(frames, ignore_index=True)
    wide = long.pivot_table(index=KEY, columns="run_id", values="value", aggfunc="first", sort=False)
    return wide.reindex(columns=[r.run_id for r in runs])


def busy_series(runs: list[RunTables]) -> pd.DataFrame:
    """Shaped like :func:`series`: why the machine was busy while each cell ran ("" when quiet)."""
    frames = []
    for run in runs:
        ok = run.results[(run.results["status"] == OK) & run.results["metric"].notna()]
        reasons = {p: busy_reason(p) or "" for p in ok["params"].unique()}
        frames.append(ok.assign(run_id=run.run_id, dataset=ok["dataset"].astype("object").fillna(""),
                                busy=ok["params"].map(reasons))[KEY + ["run_id", "busy"]])
    long = pd.concat(frames, ignore_index=True).drop_duplicates(KEY + ["run_id"])
    return long.pivot(index=KEY, columns="run_id", values="busy")


def busy_timings(runs: list[RunTables], gates: Gates, wide: pd.DataFrame) -> pd.DataFrame:
    """Shaped like ``wide`` (:func:`series`): why each timing was measured on a busy machine ("" when quiet,
    and for every metric that is not a timing)."""
    reasons = busy_series(runs).reindex(index=wide.index, columns=wide.columns).fillna("")
    noisy = [gates.policy(key[4]).kind == NOISY for key in wide.index]
    return reasons.where(pd.Series(noisy, index=wide.index), "", axis=0)


def quiet_series(runs: list[RunTables], gates: Gates) -> pd.DataFrame:
    """:func:`series` with every timing measured on a busy machine left out (NaN): what the night-to-night
    spread is computed on."""
    wide = series(runs)
    return wide.mask(busy_timings(runs, gates, wide) != "")


@dataclass
class Trend:
    model: str
    backend: str
    task: str
    dataset: str
    metric: str
    values: list[float | None]
    change_points: list[ChangePoint]
    higher_is_better: bool | None
    #: per run: why the machine was busy ("" when quiet or not a timing); such a value is not judged
    busy: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.backend}/{self.task}"

    def verdict(self, point: ChangePoint) -> str:
        if self.higher_is_better is None:
            return "changed"
        return "improved" if (point.after > point.before) == self.higher_is_better else "regressed"


def history(runs: list[RunTables], gates: Gates) -> list[Trend]:
    wide = series(runs)
    busy = busy_timings(runs, gates, wide)
    quiet = wide.mask(busy != "")
    run_ids = list(wide.columns)
    direction = {}
    for run in runs:
        for metric, hib in run.results.dropna(subset=["metric"]).groupby("metric")["higher_is_better"].first().items():
            direction[metric] = None if pd.isna(hib) else bool(hib)
    trends = []
    for (key, row), judged, reasons in zip(wide.iterrows(), quiet.to_numpy(dtype=np.float64), busy.to_numpy(),
                                           strict=True):
        values = row.to_numpy(dtype=np.float64)
        idx = np.flatnonzero(~np.isnan(judged))
        x = judged[idx]
        cuts = change_points(x, gates.policy(key[4]))
        bounds = [0, *cuts, len(x)]
        points = [ChangePoint(int(idx[k]), run_ids[idx[k]], float(np.median(x[bounds[i]:k])),
                              float(np.median(x[k:bounds[i + 2]]))) for i, k in enumerate(cuts)]
        trends.append(Trend(*key, values=[None if math.isnan(v) else float(v) for v in values],
                            change_points=points, higher_is_better=direction.get(key[4]), busy=list(reasons)))
    return trends


def to_markdown(runs: list[RunTables], trends: list[Trend], last: int = 10) -> str:
    run_ids = [r.run_id for r in runs]
    shown = run_ids[-last:]
    lines = [f"**{markdown.text(runs[0].suite)}**: {len(runs)} runs, {markdown.code(run_ids[0])} … "
             f"{markdown.code(run_ids[-1])}.", ""]
    steps = [(t, p) for t in trends for p in t.change_points]
    if steps:
        lines += ["Change points (a step that persisted for at least two runs; timings marked busy were measured "
                  "on a busy machine and are left out):", ""]
        lines += [f"- {t.verdict(p)}: {markdown.text(f'{t.label} {t.metric}')} {fmt_value(p.before)} → "
                  f"{fmt_value(p.after)} ({p.change * 100:+.1f}%) from run {markdown.code(p.run_id)}" for t, p in steps]
    else:
        lines.append("No change points.")
    for metric in dict.fromkeys(t.metric for t in trends):
        group = [t for t in trends if t.metric == metric]
        lines += ["", f"### {markdown.text(metric)}", ""]
        table = [[t.label, *(fmt_value(v) + (" (busy)" if b else "") for v, b in zip(
                      t.values[-last:], (t.busy or [""] * len(t.values))[-last:], strict=True)),
                  "; ".join(f"{p.change * 100:+.1f}% at {markdown.code(p.run_id)}" for p in t.change_points)]
                 for t in group]
        lines.append(markdown.table(table, ["cell", *shown, "change points"]))
    return "\n".join(lines) + "\n"


def to_json(runs: list[RunTables], trends: list[Trend]) -> str:
    doc = {"suite": runs[0].suite, "runs": [r.run_id for r in runs],
           "trends": [{**{k: v for k, v in asdict(t).items() if k != "change_points"},
                       "change_points": [{**asdict(p), "change": p.change, "verdict": t.verdict(p)}
                                         for p in t.change_points]} for t in trends]}
    return json.dumps(doc, indent=2)
