"""The gates of ``harness compare`` and ``harness history``: each metric's default (its record's gate,
:mod:`harness.core.gates` says what the kinds mean), then the suite's ``gates:`` (``timings:`` there applies
to every timing), then the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import Field, model_validator

from harness.core.errors import UserError
from harness.core.gates import COUNT, EXACT, MIN_RUNS, NOISY, RUNS, STDERR, K, Policy, exact
from harness.core.settings import StrictModel
from harness.tasks import METRICS

#: significance level of the Mann-Whitney U test (asv's default)
ALPHA = 0.002
#: the ``gates:`` entry that applies to every timing metric
TIMINGS = "timings"


#: a metric no task registers (an older run's): compared as deterministic, 1%
FALLBACK = exact(0.01)


def default(metric: str) -> Policy:
    """The metric's own gate (its record's), or :data:`FALLBACK`."""
    record = METRICS.get(metric)
    return FALLBACK if record is None else record.gate


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


def kind_of(metric: str) -> str:
    return default(metric).kind


def check_gates(gates: dict[str, Gate]) -> None:
    """A suite's gates name known metrics (or ``timings``) and set what their kind uses; raises ValueError
    (for pydantic)."""
    for metric, gate in gates.items():
        if metric not in METRICS and metric != TIMINGS:
            raise ValueError(f"{metric}: unknown metric (known: {', '.join(sorted(METRICS))}, or {TIMINGS} "
                             "for every timing)")
        kind = NOISY if metric == TIMINGS else kind_of(metric)
        if kind == COUNT:
            raise ValueError(f"{metric}: a count gates nothing")
        if kind == STDERR:
            raise ValueError(f"{metric}: gated by the significance of a change (--alpha), nothing to set")
        if kind == NOISY and (gate.tolerance is not None or gate.abs_tolerance is not None):
            raise ValueError(f"{metric}: a timing is gated by threshold (a ratio > 1), k and runs, not tolerance")
        if kind == EXACT and (gate.threshold, gate.k, gate.runs) != (None, None, None):
            raise ValueError(f"{metric}: a deterministic metric is gated by tolerance / abs_tolerance, "
                             "not threshold, k or runs")


@dataclass
class Gates:
    """The policy of every metric: defaults, then the suite's ``gates:``, then the command line."""

    suite: dict[str, dict]
    threshold: dict[str | None, float]
    tolerance: dict[str | None, float]
    alpha: float = ALPHA

    def policy(self, metric: str) -> Policy:
        policy = default(metric)
        for entry in ((TIMINGS, metric) if policy.kind == NOISY else (metric,)):
            policy = replace(policy, **{k: v for k, v in self.suite.get(entry, {}).items() if v is not None})
        if policy.kind == NOISY:
            cli = self.threshold.get(metric, self.threshold.get(None))
            return policy if cli is None else replace(policy, threshold=cli)
        if policy.kind == EXACT:
            cli = self.tolerance.get(metric, self.tolerance.get(None))
            return policy if cli is None else replace(policy, tolerance=cli)
        return policy


def parse_overrides(values: list[str], option: str, minimum: float) -> dict[str | None, float]:
    """``--threshold 1.2`` (every metric of that kind) or ``--threshold decode_tok_s=1.3``."""
    out: dict[str | None, float] = {}
    for text in values:
        metric, _, number = text.rpartition("=")
        try:
            value = float(number)
        except ValueError:
            raise UserError(f"{option} {text}: expected [METRIC=]NUMBER") from None
        if value < minimum or (option == "--threshold" and value == minimum):
            raise UserError(f"{option} {text}: expected a number {'>' if option == '--threshold' else '≥'} "
                            f"{minimum:g}")
        if metric and metric not in METRICS:
            raise UserError(f"{option} {text}: unknown metric {metric!r}")
        out[metric or None] = value
    return out
