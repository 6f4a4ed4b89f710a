"""When a metric counts as changed: the kinds of gate and the resolved gate of one metric (:class:`Policy`).

Four kinds of metric, because they vary for different reasons:

- ``noisy`` (timings): the same tree measures differently every night. A change counts only if the ratio
  of the values passes ``threshold`` *and* the difference is significant across independent processes
  (asv's rule on one figure per process: Mann-Whitney U when there are enough processes, else
  non-overlapping confidence intervals). Repeats inside one process agree with each other far more
  closely than two nights do, so they are not evidence. Where the night-to-night spread is known (a
  history of runs), the threshold is widened to at least ``k`` robust standard deviations of it, over the
  last ``runs`` runs.
- ``exact`` (perplexity, KLD, sizes, memory): the same tree gives the same number up to float noise; a
  change counts when it passes ``tolerance`` (relative) and ``abs_tolerance`` (absolute).
- ``count`` (tokens scored): no direction; a change says the cells did not read the same input.
- ``stderr`` (an accuracy over a sample of documents, lm-eval's): a change counts when a z-test on the two
  values' standard errors finds it significant at ``alpha`` (a few questions more or less right is noise).

Each metric's default gate is part of its record (:class:`harness.core.metrics.Metric`); a suite overrides
it under ``gates:`` and the command line overrides both (:mod:`harness.analysis.gates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

NOISY, EXACT, COUNT, STDERR = "noisy", "exact", "count", "stderr"

#: a calibrated timing threshold is at least K robust σ of the night-to-night spread: the change between two
#: unchanged nights has σ·√2, so 4σ is 2.8 of its standard deviations (0.5% two-sided per metric if normal,
#: a few percent of pairs over a suite's correlated timings)
K = 4.0
#: runs of history the spread is measured over (the last ones before the new run), and the fewest that
#: calibrate a threshold (four night-to-night differences)
RUNS, MIN_RUNS = 20, 5


@dataclass(frozen=True)
class Policy:
    """The resolved gate of one metric."""

    kind: Literal["noisy", "exact", "count", "stderr"]
    threshold: float = 1.0
    tolerance: float = 0.0
    abs_tolerance: float = 0.0
    k: float = K
    runs: int = RUNS

    def describe(self) -> str:
        if self.kind == NOISY:
            return f"ratio ≥ {self.threshold:g} and significant"
        if self.kind == EXACT:
            parts = [f"{self.tolerance:.3g} relative"] + ([f"{self.abs_tolerance:.3g} absolute"]
                                                          if self.abs_tolerance else [])
            return "beyond " + " and ".join(parts)
        if self.kind == STDERR:
            return "significant by its stderr"
        return "informational"


def noisy(threshold: float) -> Policy:
    """A timing's gate: the ratio a change must reach (and be significant)."""
    return Policy(NOISY, threshold=threshold)


def exact(tolerance: float, abs_tolerance: float = 0.0) -> Policy:
    """A deterministic metric's gate: the relative (and absolute) change allowed."""
    return Policy(EXACT, tolerance=tolerance, abs_tolerance=abs_tolerance)


#: a count: no direction, never gates (a change says the cells did not read the same input)
COUNTED = Policy(COUNT)
#: an accuracy over a sample: a change counts when significant by the two values' standard errors
BY_STDERR = Policy(STDERR)
