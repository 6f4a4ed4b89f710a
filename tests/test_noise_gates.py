"""Noise-aware timing gates on synthetic nights with a known drift and known steps (no wall clock): the
history's night-to-night spread widens a threshold to k·σ, a step beyond it is still caught, and
``compare --calibrate`` measures what unchanged runs look like."""

import json
import math
import statistics

import numpy as np
import pandas as pd
import pytest
from runs import SUITE, backend, perplexity_cell, throughput_cell, write_run

from harness.analysis import compare, noise
from harness.analysis.gates import Gates
from harness.cli import main
from harness.results.store import read_run

NO_GATES = Gates({}, {}, {})
#: ten nights of an unchanged tree on a drifting machine: |successive differences| .05 .08 .11 .13 .07 .03
#: .07 .12 .09, median .08, so the robust σ is 1.4826 · .08 / √2 ≈ 8.4% and 4σ ≈ 34%
LEVELS = [1.0, 1.05, 0.97, 1.08, 0.95, 1.02, 0.99, 1.06, 0.94, 1.03]


def nights(root, levels, interleaved=True, repeats=7, cv=0.01, seed=0, gates=None, first_day=1):
    """One run per level (decode and prefill scaled by it), laid out as ``harness run`` does: root/SUITE/RUN_ID."""
    rng = np.random.default_rng(seed)
    paths = []
    for i, level in enumerate(levels):
        day = first_day + i
        record = throughput_cell(rng, backend("gguf-cpu"), decode=90 * level, prefill=230 * level, cv=cv,
                                 repeats=repeats, interleaved=interleaved)
        paths.append(write_run(root / SUITE / f"2026{day // 28 + 10:02d}{day % 28 + 1:02d}-020000", [record],
                               started_at=f"2026-{day // 28 + 10:02d}-{day % 28 + 1:02d}T02:00:00+00:00",
                               gates=gates))
    return paths


def figures(paths, metric):
    return np.array([pd.read_parquet(p / "results.parquet").set_index("metric").loc[metric, "value"] for p in paths])


def robust_sigma(x):
    """history's robust σ of a series, computed here from its definition."""
    return 1.4826 * statistics.median(abs(b - a) for a, b in zip(x, x[1:], strict=False)) / math.sqrt(2)


def night_sigma(x):
    """compare's night-to-night σ, relative, from its definition: of the logs, the larger of the robust σ
    and the RMS of the successive differences with the largest left out."""
    logs = [math.log(v) for v in x]
    differences = sorted(abs(b - a) for a, b in zip(logs, logs[1:], strict=False))[:-1]
    return max(robust_sigma(logs), math.sqrt(sum(d * d for d in differences) / len(differences) / 2))


def row(result, metric):
    return next(r for r in result.rows if r.metric == metric)


def test_history_widens_the_threshold_to_k_sigma_and_still_catches_a_step(tmp_path, capsys):
    paths = nights(tmp_path, LEVELS + [LEVELS[-1] * 0.85])  # tonight: the machine 15% slower, nothing changed
    base, new = map(str, paths[-2:])
    # without history the false alarm: 7 rounds each agree within 1%, so the drift is "significant"
    assert main(["compare", base, new, "--no-history"]) == 1
    out = capsys.readouterr().out
    assert "Timing thresholds are not calibrated" in out and "Mann-Whitney U (7 vs 7 processes)" in out
    # with the history kept beside the runs (results/SUITE, tonight left out) the threshold is 4σ
    assert main(["compare", base, new, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    decode = figures(paths[:-1], "decode_tok_s")
    relative = night_sigma(decode)
    assert relative == pytest.approx(0.084, abs=0.006)
    row_ = next(r for r in doc["rows"] if r["metric"] == "decode_tok_s")
    assert row_["sigma"] == pytest.approx(relative, rel=1e-9)
    assert row_["gate"].startswith(f"ratio ≥ {math.exp(4 * relative):.3g} (≥ 4σ, σ {relative * 100:.1f}% over 10 runs;")
    assert row_["verdict"] == "unchanged" and row_["p_value"] < 0.002  # significant, but inside the noise
    assert doc["calibration"]["runs"] == 10 and "calibrated" in doc["calibration"]["note"]

    # a real step (n_threads 2 -> 1 halves the speed) is far outside it, tonight and the nights after
    slow = nights(tmp_path, [0.5, 0.52, 0.49], seed=1, first_day=len(LEVELS) + 2)
    for night in slow:
        assert main(["compare", str(paths[-2]), str(night)]) == 1
        out = capsys.readouterr().out
        assert "regressed" in out and "decode_tok_s" in out and "calibrated on the night-to-night" in out


def test_a_run_of_one_process_is_judged_by_the_history_alone(tmp_path):
    paths = nights(tmp_path, LEVELS + [LEVELS[-1] * 0.85, LEVELS[-1] * 0.5], interleaved=False)
    runs = [read_run(p) for p in paths]
    base, drifted, slowed = runs[-3:]
    for new in (drifted, slowed):  # without history one process each shows nothing: changed at most
        decode = row(compare.compare(base, new, NO_GATES), "decode_tok_s")
        assert decode.verdict in ("changed", "unchanged") and decode.test == "1 vs 1 processes: untestable"
    drift = row(compare.compare(base, drifted, NO_GATES, noise.history_before(runs, drifted, NO_GATES, "h")),
                "decode_tok_s")
    assert drift.verdict == "unchanged"
    assert abs(math.log(drift.new / drift.base)) < 4 * night_sigma(figures(paths[:-2], "decode_tok_s"))
    history = noise.history_before(runs, slowed, NO_GATES, "h")
    assert len(history.runs) == 11  # the drifted night counts as history for the night after it
    step = row(compare.compare(base, slowed, NO_GATES, history), "decode_tok_s")
    assert step.verdict == "regressed"
    assert step.test == "1 vs 1 processes: untestable; |Δ| > 4σ of 11 runs"
    assert abs(math.log(step.new / step.base)) > 4 * night_sigma(figures(paths[:-1], "decode_tok_s"))


def test_false_alarms_on_a_drifting_machine_with_and_without_history(tmp_path):
    """26 unchanged nights, the machine drifting 6% from night to night, each night 7 interleaved rounds
    agreeing within 2%; then 2 nights at 60% speed. Pairs judged as a nightly does: tonight against last
    night, with the nights before tonight as history (20 pairs have at least 5 nights of it)."""
    rng = np.random.default_rng(5)
    levels = list(1 + 0.06 * rng.standard_normal(26)) + list(0.6 * (1 + 0.06 * rng.standard_normal(2)))
    runs = [read_run(p) for p in nights(tmp_path, levels, cv=0.02, seed=6)]

    def flagged(base, new, history):
        return {r.metric for r in compare.compare(base, new, NO_GATES, history).rows
                if r.verdict in ("regressed", "improved")}

    quiet = [(runs[i - 1], runs[i]) for i in range(6, 26)]
    without = sum(bool(flagged(b, n, None)) for b, n in quiet)
    with_history = sum(bool(flagged(b, n, noise.history_before(runs, n, NO_GATES, "h"))) for b, n in quiet)
    print(f"flagged pairs: {without} without history, {with_history} with")
    assert without >= 4, "the drift alone fails the uncalibrated gate (two nights 6% apart each: ~24% of pairs)"
    assert with_history <= 1, "at most 1 pair in 20 flagged, counting every metric"
    for new in runs[26:]:  # each slowed night against the last unchanged one, history including slow nights
        assert {"decode_tok_s", "prefill_tok_s"} <= flagged(runs[25], new, noise.history_before(runs, new, NO_GATES,
                                                                                                  "h"))


def test_history_keeps_the_runs_before_the_new_one_and_the_suites_k_and_runs(tmp_path, capsys):
    gates = {"timings": {"k": 3, "runs": 6}, "decode_tok_s": {"threshold": 1.05}}
    paths = nights(tmp_path, LEVELS + [1.0, 1.0], gates=gates)
    runs = [read_run(p) for p in paths]
    new = runs[5]  # a rerun of an old night: later runs are not its history
    gates_ = Gates(new.info["gates"], {}, {})
    history = noise.history_before(runs, new, gates_, "h")
    assert [r.run_id for r in history.runs] == [r.run_id for r in runs[:5]]
    new = runs[-1]
    history = noise.history_before(runs, new, gates_, "h")
    key = ("smollm2", "gguf-cpu", "speed", "")
    spread = history.spread(key, "decode_tok_s")
    expected = figures(paths[5:11], "decode_tok_s")  # the last 6 before NEW
    assert spread.runs == 6 and spread.relative == pytest.approx(night_sigma(expected))
    decode = row(compare.compare(runs[-2], new, gates_, history), "decode_tok_s")
    assert f"(≥ 3σ, σ {spread.relative * 100:.1f}% over 6 runs; gate 1.05)" in decode.gate
    assert history.spread(key, "load_s") is not None and history.spread(key, "model_bytes") is None  # timings only

    # too short a history: said so, and the gate is the suite's
    assert main(["compare", str(paths[3]), str(paths[4]), "--history", str(tmp_path / SUITE)]) in (0, 1)
    out = capsys.readouterr().out
    assert "holds 4 runs before the new one, 5 are needed" in out
    # a history of another suite is bad input
    other = write_run(tmp_path / "other" / "r1", [perplexity_cell(np.random.default_rng(1))], suite="other")
    assert main(["compare", str(paths[-2]), str(paths[-1]), "--history", str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "a run of suite 'other', not of 'nightly'" in err and len(err.splitlines()) == 1


def test_calibrate_measures_unchanged_pairs_and_suggests_gates(tmp_path, capsys):
    """Eight nights whose 5 rounds agree exactly (cv 0), so each night's figure is its level: what calibrate
    reports can be computed from the levels by hand. One jump of 13% is flagged by the default 10% gate."""
    levels = [1.0, 1.04, 0.98, 1.03, 0.97, 1.10, 0.99, 1.05]
    rng = np.random.default_rng(0)
    for day, level in enumerate(levels):
        write_run(tmp_path / SUITE / f"202611{day + 10}-020000",
                  [throughput_cell(rng, decode=90 * level, prefill=230 * level, cv=0.0, interleaved=True),
                   perplexity_cell(np.random.default_rng(7))],
                  started_at=f"2026-11-{day + 10}T02:00:00+00:00")
    assert main(["compare", "--calibrate", str(tmp_path / SUITE), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["metric"]: r for r in doc["rows"]}
    apart = [max(a, b) / min(a, b) - 1 for a, b in zip(levels, levels[1:], strict=False)]
    decode = rows["decode_tok_s"]
    assert decode["changes"] == pytest.approx(apart)
    assert decode["median"] == pytest.approx(statistics.median(apart))
    p95 = statistics.quantiles(apart, n=20, method="inclusive")[-1]
    assert decode["p95"] == pytest.approx(p95)
    sigma = night_sigma([90 * x for x in levels])
    assert decode["sigma_relative"] == pytest.approx(sigma)
    assert decode["suggested"] == pytest.approx(math.ceil(100 * max(1 + p95, math.exp(4 * sigma))) / 100)
    # 0.97 -> 1.10 and 1.10 -> 0.99 pass 10%, and 5 identical rounds make any difference "significant"
    assert decode["flagged"] == 2
    assert [(p["base"], p["new"]) for p in doc["flagged_pairs"]] == [("20261114-020000", "20261115-020000"),
                                                                     ("20261115-020000", "20261116-020000")]
    assert rows["token_ppl"]["p95"] == 0 and rows["token_ppl"]["suggested"] is None  # deterministic
    assert "tokens_scored" not in rows  # a count gates nothing
    assert doc["suggested_gates"]["decode_tok_s"] == {"threshold": decode["suggested"]}
    assert "token_ppl" not in doc["suggested_gates"]

    assert main(["compare", "--calibrate", str(tmp_path / SUITE)]) == 0
    md = capsys.readouterr().out
    assert "8 runs, 7 consecutive pairs" in md and "2 of 7 pairs flagged" in md
    assert f"  decode_tok_s: {{threshold: {decode['suggested']:g}}}" in md

    run = str(tmp_path / SUITE / "20261110-020000")
    for argv, expected in ((["compare", run, "--calibrate", str(tmp_path / SUITE)], "takes no BASE/NEW"),
                           (["compare"], "expected BASE and NEW run directories, or --calibrate DIR"),
                           (["compare", "--calibrate", run], "history needs at least two runs")):
        assert main(argv) == 2
        assert expected in capsys.readouterr().err


def test_a_machine_that_flips_between_two_speeds_is_not_flagged_once_history_has_seen_it(tmp_path, monkeypatch):
    """The n-gram on this VM ran at ~850k or ~480k tokens/s, one or the other from run to run: most
    successive differences are ~0, so the median-based σ is tiny and every flip was 'regressed'. The
    night-to-night σ counts the flips (their RMS), so a flip the history has seen is noise; a speed below
    both levels is still caught."""
    flips = [1, 1, 1, 0.56, 1, 1, 1, 1, 0.56, 1, 1, 1, 1, 0.56, 1, 1, 1, 0.56, 1, 1, 1, 0.56, 1, 1]
    paths = nights(tmp_path, flips + [0.3], cv=0.01)
    runs = [read_run(p) for p in paths]

    def flagged_pairs(pairs):
        return sum(any(r.verdict in ("regressed", "improved") for r in compare.compare(
            b, n, NO_GATES, noise.history_before(runs, n, NO_GATES, "h")).rows) for b, n in pairs)

    quiet = [(runs[i - 1], runs[i]) for i in range(12, len(flips))]  # 12 nights of history or more
    assert flagged_pairs(quiet) == 0
    step = compare.compare(runs[-2], runs[-1], NO_GATES, noise.history_before(runs, runs[-1], NO_GATES, "h"))
    assert row(step, "decode_tok_s").verdict == "regressed"
    from harness.analysis import history

    monkeypatch.setattr(noise, "night_to_night", history.noise)  # the median-based σ alone: every flip flagged
    assert flagged_pairs(quiet) == sum(a != b for a, b in zip(flips[11:], flips[12:], strict=False)) > 3
