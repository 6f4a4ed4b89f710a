"""Uncertainty for the numbers the harness reports: llama.cpp's σ and bootstrap CIs over windows."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 20240531


def mean_stderr(values: np.ndarray) -> float:
    """Standard error of a mean as llama-perplexity computes it: sqrt((E[x²] − E[x]²) / (n − 1))."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 2:
        return math.nan
    var = float(np.mean(values * values) - np.mean(values) ** 2)
    return math.sqrt(max(var, 0.0) / (n - 1))


def bootstrap_ci(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray]
                 ) -> tuple[float, float]:
    """BCa confidence interval of a statistic over paired per-window samples (NaN with < 3 windows).

    ``statistic(*samples, axis=-1)`` must be vectorised, as scipy.stats.bootstrap expects.
    """
    if len(samples[0]) < 3:
        return math.nan, math.nan
    per_window = statistic(*(np.asarray(s)[:, None] for s in samples), axis=-1)
    if np.ptp(per_window) == 0:  # identical windows: no spread to resample (BCa is undefined)
        value = float(statistic(*samples, axis=-1))
        return value, value
    from scipy import stats  # imported here: 0.6 s that every cell process would pay at start

    result = stats.bootstrap(samples, statistic, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                             n_resamples=BOOTSTRAP_RESAMPLES, method="BCa",
                             rng=np.random.default_rng(BOOTSTRAP_SEED))
    low, high = result.confidence_interval
    return float(low), float(high)


def median_ci(values: np.ndarray) -> tuple[float, float, float]:
    """Median and its distribution-free CI from order statistics (the binomial interval, as asv and
    benchmark tools use for timings; no normality assumed). With 5 repeats it spans min..max (93.8%)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan
    median = float(np.median(x))
    if n < 3:
        return median, math.nan, math.nan
    from scipy import stats

    j = max(int(stats.binom.ppf((1 - CONFIDENCE) / 2, n, 0.5)), 1)
    return median, float(x[j - 1]), float(x[n - j])


def z_test_p(a: float, stderr_a: float, b: float, stderr_b: float) -> float:
    """Two-sided p-value that two independent estimates differ, from their standard errors: the z-test of
    two proportions (an accuracy's stderr is sqrt(p(1-p)/(n-1))) or of two means. Equal values: 1."""
    if a == b:
        return 1.0
    se = math.hypot(stderr_a, stderr_b)
    if se == 0:
        return 0.0
    return math.erfc(abs(a - b) / se / math.sqrt(2))
