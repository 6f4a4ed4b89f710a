"""When a metric counts as changed: the per-metric gates of ``harness compare`` and ``harness history``.

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

Defaults live in :data:`DEFAULTS`; a suite overrides them under ``gates:`` (``timings:`` there applies to
every timing) and the command line overrides both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from harness.core.errors import UserError
from harness.core.settings import StrictModel

NOISY, EXACT, COUNT, STDERR = "noisy", "exact", "count", "stderr"

#: significance level of the Mann-Whitney U test (asv's default)
ALPHA = 0.002
#: a calibrated timing threshold is at least K robust σ of the night-to-night spread: the change between two
#: unchanged nights has σ·√2, so 4σ is 2.8 of its standard deviations (0.5% two-sided per metric if normal,
#: a few percent of pairs over a suite's correlated timings)
K = 4.0
#: runs of history the spread is measured over (the last ones before the new run), and the fewest that
#: calibrate a threshold (four night-to-night differences)
RUNS, MIN_RUNS = 20, 5
#: the ``gates:`` entry that applies to every timing metric
TIMINGS = "timings"


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


def _noisy(threshold: float) -> Policy:
    return Policy(NOISY, threshold=threshold)


def _exact(tolerance: float, abs_tolerance: float = 0.0) -> Policy:
    return Policy(EXACT, tolerance=tolerance, abs_tolerance=abs_tolerance)


#: metric -> default gate. Timings: asv's 10%; more for the tail latency and for figures that are often one
#: measurement (load time, a whole scoring pass; with no samples they are only shown, never gated).
#: Quality: 0.1% (a real regression such as a flash-attention or build change moves perplexity by 0.5-1%;
#: the same build repeats to 1e-6).
DEFAULTS: dict[str, Policy] = {
    **{m: _noisy(1.10) for m in ("prefill_tok_s", "decode_tok_s", "ttft_s", "itl_p50_s", "decode_gb_s", "mbu",
                                 "prefill_flop_s", "mfu")},
    "itl_p99_s": _noisy(1.20),
    "load_s": _noisy(1.50),
    "scored_tok_s": _noisy(1.25),
    "tokenize_mb_s": _noisy(1.25),
    **{m: _exact(0.001) for m in ("token_ppl", "bits_per_byte", "word_ppl", "nll_mean", "ppl_ratio")},
    **{m: _exact(0.0) for m in ("tokens_per_byte", "tokens_per_word", "model_bytes", "decode_bytes_per_token",
                                "differing_tokens")},
    **{m: _exact(0.01, 1e-4) for m in ("kld_mean", "kld_p99", "kld_max", "delta_p_rms")},
    "same_top1": _exact(0.0, 0.002),
    **{m: _exact(0.01) for m in ("distinct_1", "distinct_2", "rep_4gram", "entropy_mean", "max_prob_mean",
                                 "len_mean", "ref_nll_mean")},
    "peak_rss_mb": _exact(0.10),
    "peak_vram_mb": _exact(0.05),
    **{m: Policy(COUNT) for m in ("tokens_scored", "bytes_scored")},
    **{m: Policy(STDERR) for m in ("lmeval_acc", "lmeval_acc_norm", "lmeval_acc_mutual_info", "lmeval_exact_match",
                                   "lmeval_f1", "lmeval_mcc")},
    **{m: _exact(0.001) for m in ("lmeval_perplexity", "lmeval_word_perplexity", "lmeval_byte_perplexity",
                                  "lmeval_bits_per_byte")},
}

#: a metric the table does not know yet (a new task's): compared as deterministic, 1%
FALLBACK = _exact(0.01)


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
    return DEFAULTS.get(metric, FALLBACK).kind


def check_gates(gates: dict[str, Gate]) -> None:
    """A suite's gates name known metrics (or ``timings``) and set what their kind uses; raises ValueError
    (for pydantic)."""
    for metric, gate in gates.items():
        if metric not in DEFAULTS and metric != TIMINGS:
            raise ValueError(f"{metric}: unknown metric (known: {', '.join(sorted(DEFAULTS))}, or {TIMINGS} "
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
        policy = DEFAULTS.get(metric, FALLBACK)
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
        if metric and metric not in DEFAULTS:
            raise UserError(f"{option} {text}: unknown metric {metric!r}")
        out[metric or None] = value
    return out
