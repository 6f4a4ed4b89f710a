"""A suite's ``gates:``: one entry per metric (or ``timings``: every timing) overriding the metric's own gate,
checked against the metric records when the suite is read (:mod:`harness.analysis.gates` applies them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from harness.core.gates import COUNT, EXACT, MIN_RUNS, NOISY, RUNS, STDERR, K
from harness.core.metrics import METRICS
from harness.core.settings import StrictModel

#: the ``gates:`` entry that applies to every timing metric
TIMINGS = "timings"


class Gate(StrictModel):
    """One entry under a suite's ``gates:``, keyed by metric name (or ``timings``: every timing)."""

    threshold: float | None = Field(None, gt=1, description="noisy metrics (timings): the ratio a change "
                                    "must reach, e.g. 1.2 = 20% worse or better; it must also be significant")
    tolerance: float | None = Field(None, ge=0, description="deterministic metrics: relative change allowed")
    abs_tolerance: float | None = Field(None, ge=0, description="deterministic metrics: absolute change allowed")
    k: float | None = Field(None, gt=0, description=f"timings: with a history of runs, the threshold is at least "
                            f"k robust standard deviations of the night-to-night spread (default {K:g})")
    runs: int | None = Field(None, ge=MIN_RUNS, description="timings: the spread is measured over the last "
                             f"this many runs before the new one (default {RUNS})")

    @model_validator(mode="after")
    def _something_set(self):
        if all(v is None for v in self.model_dump().values()):
            raise ValueError("expected threshold, k or runs (timings) or tolerance / abs_tolerance "
                             "(deterministic metrics)")
        return self


def check_gates(gates: dict[str, Gate]) -> None:
    """A suite's gates name known metrics (or ``timings``) and set what their kind uses; raises ValueError
    (for pydantic)."""
    for metric, gate in gates.items():
        if metric not in METRICS and metric != TIMINGS:
            raise ValueError(f"{metric}: unknown metric (known: {', '.join(sorted(METRICS))}, or {TIMINGS} "
                             "for every timing)")
        kind = NOISY if metric == TIMINGS else METRICS[metric].gate.kind
        if kind == COUNT:
            raise ValueError(f"{metric}: a count gates nothing")
        if kind == STDERR:
            raise ValueError(f"{metric}: gated by the significance of a change (--alpha), nothing to set")
        if kind == NOISY and (gate.tolerance is not None or gate.abs_tolerance is not None):
            raise ValueError(f"{metric}: a timing is gated by threshold (a ratio > 1), k and runs, not tolerance")
        if kind == EXACT and (gate.threshold, gate.k, gate.runs) != (None, None, None):
            raise ValueError(f"{metric}: a deterministic metric is gated by tolerance / abs_tolerance, "
                             "not threshold, k or runs")
