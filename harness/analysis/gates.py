"""The gates of ``harness compare`` and ``harness history``: each metric's default (its record's gate,
:mod:`harness.core.gates` says what the kinds mean), then the suite's ``gates:`` (``timings:`` there applies
to every timing), then the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pydantic import ValidationError

from harness.core.errors import UserError
from harness.core.gates import EXACT, NOISY, Policy, exact
from harness.core.suite_gates import TIMINGS, Gate
from harness.tasks import METRICS

#: significance level of the Mann-Whitney U test (asv's default)
ALPHA = 0.002
#: a metric no task registers (an older run's): compared as deterministic, 1%
FALLBACK = exact(0.01)


def default(metric: str) -> Policy:
    """The metric's own gate (its record's), or :data:`FALLBACK`."""
    record = METRICS.get(metric)
    return FALLBACK if record is None else record.gate


def recorded_gates(info: dict) -> dict[str, dict]:
    """The ``gates`` a run's ``run.json`` recorded, checked as a suite's are: a value edited by hand (or
    written by something else) is one line of bad input, not a comparison that crashes."""
    gates = {}
    for metric, gate in (info.get("gates") or {}).items():
        try:
            gates[metric] = Gate.model_validate(gate).model_dump(exclude_none=True)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in ("gates", metric, *error["loc"]))
            raise UserError(f"run.json of run {info.get('run_id')}: {where}: {error['msg']}, "
                            f"got {error.get('input')!r:.40}") from None
    return gates


def kind_of(metric: str) -> str:
    return default(metric).kind


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
        if not math.isfinite(value) or value < minimum or (option == "--threshold" and value == minimum):
            raise UserError(f"{option} {text}: expected a finite number {'>' if option == '--threshold' else '≥'} "
                            f"{minimum:g}")
        if metric and metric not in METRICS:
            raise UserError(f"{option} {text}: unknown metric {metric!r}")
        out[metric or None] = value
    return out
