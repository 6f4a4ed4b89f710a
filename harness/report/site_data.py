"""The dashboard's data: the runs as nights (machine and library facts), every metric of every cell as a series
over them (:class:`Line`, with its trend and change points), per suite."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from harness.analysis.gates import Gates
from harness.analysis.history import KEY, ChangePoint, Trend, history, passes_gate, run_dirs
from harness.core import canary
from harness.core.errors import UserError
from harness.core.filenames import file_stems, stem_map
from harness.report import charts
from harness.report.console import task_type
from harness.results.store import RunTables, read_run

#: the facts of ``run.json``'s environment a change of which is marked (the commit changes every night)
ENV_FACTS = ["cpu", "cpu_count", "memory_gb", "gpu", "platform", "python", "harness_version"]


def _when(run: RunTables) -> str:
    """The run's start as plotly reads a date (UTC, no zone)."""
    text = run.info.get("started_at")
    try:
        moment = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return ""
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(sep=" ", timespec="seconds")


def _env(run: RunTables) -> dict[str, str]:
    env = run.info.get("environment") or {}
    facts = {k: ", ".join(env[k]) or "none" if isinstance(env.get(k), list) else str(env[k])
             for k in ENV_FACTS if env.get(k) is not None}
    facts.update({name: str(version) for name, version in sorted((env.get("libraries") or {}).items())})
    return facts


def env_changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two runs' machines and libraries, one phrase per fact ("torch 2.12 → 2.13")."""
    return [f"{k} {before.get(k, '–')} → {after.get(k, '–')}" for k in dict.fromkeys([*before, *after])
            if before.get(k) != after.get(k)]


@dataclass
class Night:
    """A run as the site shows it."""

    run: RunTables
    page: str  # its report, relative to the site's root
    when: str
    env: dict[str, str]

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def commit(self) -> str:
        return str((self.run.info.get("environment") or {}).get("git_commit") or "")

    @property
    def lane(self) -> tuple[str, tuple[str, ...]]:
        """Runs of one suite over the same backends: one nightly job's, whose machine is compared night to
        night (the jobs of a nightly run on different machines)."""
        return str(self.run.suite), tuple(sorted(self.run.results["backend"].dropna().unique()))


@dataclass
class Line:
    """One metric of one cell over the nights it ran."""

    suite: str
    trend: Trend
    nights: list[Night]
    values: list[float]
    low: list[float | None]
    high: list[float | None]
    family: str
    gates: Gates
    #: per night: why the machine was busy during the figure ("" when quiet), which then is never judged
    busy: list[str]
    #: per night: the machine canary's median time (:mod:`harness.core.canary`), for interleaved cells
    canary: list[float | None]

    @property
    def metric(self) -> str:
        return self.trend.metric

    @property
    def cell(self) -> tuple[str, str, str, str]:
        return self.trend.model, self.trend.backend, self.trend.task, self.trend.dataset

    def verdict(self, before: float, after: float) -> str:
        if not passes_gate(before, after, self.gates.policy(self.metric)):
            return "same"
        if self.trend.higher_is_better is None:
            return "changed"
        return "improved" if (after > before) == self.trend.higher_is_better else "regressed"

    def point_of(self, cp: ChangePoint) -> int:
        return next(i for i, n in enumerate(self.nights) if n.run_id == cp.run_id)


def chart_key(line: Line) -> tuple[str, str, str]:
    """The chart a line is drawn in: one per suite, task and dataset."""
    return line.suite, line.trend.task, line.trend.dataset


@dataclass
class Site:
    nights: list[Night]
    lines: list[Line]
    suites: list[str]
    views: dict[str, str] = field(default_factory=dict)  # report view -> its page's body (views with plots)
    #: metric -> the stem of its page under metrics/ (names from results are never paths as they are)
    metric_pages: dict[str, str] = field(init=False)
    #: (suite, task, dataset) -> the element id of its chart on a metric page, one per key
    chart_ids: dict[tuple[str, str, str], str] = field(init=False)

    def __post_init__(self):
        self.metric_pages = stem_map(sorted({line.metric for line in self.lines}))
        keys = sorted({chart_key(line) for line in self.lines})
        self.chart_ids = dict(zip(keys, file_stems(["-".join(p for p in key if p) for key in keys]), strict=True))

    def metric_href(self, metric: str, up: str = "") -> str:
        return f"{up}metrics/{self.metric_pages[metric]}.html"

    def chart_href(self, line: Line, up: str = "") -> str:
        """The link to a line's chart on its metric's page (an attribute value: escaped by the caller)."""
        return f"{self.metric_href(line.metric, up)}#{self.chart_ids[chart_key(line)]}"


def load_nights(paths: list[Path]) -> list[Night]:
    runs, seen = [], set()
    for path in run_dirs(paths):
        if path.resolve() not in seen:
            seen.add(path.resolve())
            runs.append(read_run(path))
    if not runs:
        raise UserError(f"{' '.join(map(str, paths))}: no runs")
    runs.sort(key=lambda r: (r.info.get("started_at") or "", r.run_id))
    # the same run id in two folders gets two pages
    return [Night(run, f"runs/{stem}.html", _when(run), _env(run))
            for run, stem in zip(runs, file_stems([r.run_id for r in runs]), strict=True)]


def _lines(suite: str, nights: list[Night], gates: Gates) -> list[Line]:
    ok = [n.run.results[(n.run.results["status"] == "ok") & n.run.results["metric"].notna()].assign(
        run_id=n.run_id) for n in nights]
    if not any(len(frame) for frame in ok):
        return []
    long = pd.concat(ok, ignore_index=True)
    long["dataset"] = long["dataset"].astype("object").fillna("")
    ci = {key: (lo, hi) for key, lo, hi in zip(
        long[KEY + ["run_id"]].itertuples(index=False, name=None), long["ci_low"], long["ci_high"], strict=True)}
    family = {cell: task_type(params) for cell, params in zip(
        long[KEY[:4]].itertuples(index=False, name=None), long["params"], strict=True)}
    canaries = {params: canary.of_run(params) for params in long["params"].unique()}
    machine = {key: canaries[params] for key, params in zip(
        long[KEY[:4] + ["run_id"]].itertuples(index=False, name=None), long["params"], strict=True)}
    lines = []
    for trend in history([n.run for n in nights], gates):
        have = [i for i, v in enumerate(trend.values) if v is not None]
        key = (trend.model, trend.backend, trend.task, trend.dataset, trend.metric)
        bounds = [ci.get(key + (nights[i].run_id,), (None, None)) for i in have]
        lines.append(Line(suite, trend, [nights[i] for i in have], [trend.values[i] for i in have],
                          charts.numbers(lo for lo, _ in bounds), charts.numbers(hi for _, hi in bounds),
                          family[key[:4]], gates, [trend.busy[i] for i in have],
                          [machine.get(key[:4] + (nights[i].run_id,)) for i in have]))
    return lines


def collect(paths: list[Path], make_gates: Callable[[dict], Gates]) -> Site:
    """The runs under ``paths`` and every metric's series, per suite (gates: the suite's latest run's)."""
    nights = load_nights(paths)
    suites = list(dict.fromkeys(str(n.run.suite) for n in nights))
    lines = []
    for suite in suites:
        mine = [n for n in nights if str(n.run.suite) == suite]
        lines += _lines(suite, mine, make_gates(mine[-1].run.info))
    return Site(nights, lines, suites)
