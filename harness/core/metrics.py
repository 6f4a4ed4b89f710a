"""The metric record (one per metric name: its unit, direction, gate and how it is shown), the registry
the tasks fill, and the measurement record tasks return.

A task module declares the records of the metrics it measures (:func:`register`) beside the code that
measures them; compare, history, the console table and the dashboard read them here, so adding a metric
touches the task that measures it and nothing else. Names are stable: nightly comparisons key on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.core.gates import Policy


@dataclass(frozen=True)
class Metric:
    """Everything the harness knows about one metric name."""

    name: str
    unit: str
    higher_is_better: bool
    #: the default gate of compare and history (:mod:`harness.core.gates`); a suite's ``gates:`` overrides it
    gate: Policy
    #: the column title in the console's tables and the dashboard's overview (default: the name)
    short: str = ""
    #: a ratio in [0, 1], shown as a percentage in the console
    fraction: bool = False
    #: shown with its standard error in the console (an accuracy on a few hundred documents is uncertain in its
    #: first digit)
    with_stderr: bool = False

    def __post_init__(self):
        if not isinstance(self.gate, Policy):
            raise TypeError(f"metric {self.name!r}: expected a gate (harness.core.gates.Policy), got {self.gate!r}")

    @property
    def title(self) -> str:
        return self.short or self.name


#: name -> record, filled by the task modules' :func:`register` (importing :mod:`harness.tasks` imports
#: them all, so read it through ``harness.tasks.METRICS``)
METRICS: dict[str, Metric] = {}


def register(*metrics: Metric) -> tuple[Metric, ...]:
    """Make metrics known; a name is registered once (two tasks that report it share one record)."""
    for metric in metrics:
        if not isinstance(metric, Metric):
            raise TypeError(f"expected a Metric record, got {metric!r}")
        if metric.name in METRICS:
            raise ValueError(f"metric {metric.name!r} is registered twice")
    METRICS.update((m.name, m) for m in metrics)
    return metrics


@dataclass
class Measurement:
    """One metric of one cell; becomes one row of the results table."""

    metric: str
    value: float
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    stderr: float | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise KeyError(f"unknown metric {self.metric!r}: register its record (harness.core.metrics.register) "
                           "in the task that measures it")

    def row(self) -> dict:
        record = METRICS[self.metric]
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in (("ci_low", self.ci_low), ("ci_high", self.ci_high), ("stderr", self.stderr))}
        return {"metric": self.metric, "value": float(self.value), "unit": record.unit,
                "higher_is_better": record.higher_is_better, "n": self.n, **clean}
