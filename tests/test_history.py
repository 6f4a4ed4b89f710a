"""harness history: a persistent step is found at the run where it started; single noisy nights are not."""

import json
import re

import numpy as np
import pytest
from runs import SCRIPT_XSS, XSS, backend, hostile_nights, perplexity_cell, throughput_cell, write_run

from harness.analysis.history import change_points, noise
from harness.cli import main
from harness.tasks import METRICS

DECODE = METRICS["decode_tok_s"].gate
PPL = METRICS["token_ppl"].gate


@pytest.mark.parametrize("cv", [0.0, 0.03])
def test_a_step_is_found_where_it_starts_at_every_position(cv):
    rng = np.random.default_rng(1)
    for n in (6, 9, 14):
        for k in range(2, n - 1):  # both segments at least two runs long
            x = 90 * (1 + cv * rng.standard_normal(n))
            x[k:] *= 0.7
            assert change_points(x, DECODE) == [k], (n, k, x)


def test_single_spikes_are_not_reported_anywhere():
    rng = np.random.default_rng(2)
    for n in (6, 10):
        for i in range(n):
            for factor in (0.5, 1.6):
                x = 90 * (1 + 0.03 * rng.standard_normal(n))
                x[i] *= factor
                assert change_points(x, DECODE) == [], (i, factor, x)
    x = np.full(8, 9.23)
    x[3] = 12.0
    assert change_points(x, PPL) == []


def test_a_step_in_the_last_run_waits_for_a_second_night():
    x = np.array([9.23] * 6 + [9.5])
    assert change_points(x, PPL) == []
    assert change_points(np.append(x, 9.5), PPL) == [6]


def test_steps_below_the_gate_or_the_noise_are_not_reported():
    x = np.array([100.0] * 4 + [95.0] * 4)  # 5%: below decode's 10% threshold
    assert change_points(x, DECODE) == []
    rng = np.random.default_rng(3)
    x = 100 * (1 + 0.15 * rng.standard_normal(10))  # 15% noise: a 12% step is inside it
    x[5:] *= 0.88
    assert noise(x) > 5
    assert change_points(x, DECODE) == []


def test_two_steps_are_both_found():
    x = np.array([9.2] * 4 + [9.6] * 4 + [9.3] * 4)
    assert change_points(x, PPL) == [4, 8]


def test_noise_matches_the_standard_deviation_of_white_noise():
    rng = np.random.default_rng(4)
    x = rng.normal(0, 2.0, 20000)
    assert noise(x) == pytest.approx(2.0, rel=0.03)
    x[10000:] += 50  # a step moves one difference only
    assert noise(x) == pytest.approx(2.0, rel=0.03)


def nightly_runs(root, n=8, step_at=5, spike_at=2):
    """``n`` nights: decode of gguf-cpu drops 30% from ``step_at`` on; gguf-b has one slow night at
    ``spike_at``; perplexity is constant except one night that scored a different text (a spike)."""
    paths = []
    for night in range(n):
        rng = np.random.default_rng(100 + night)
        slow = 0.7 if night >= step_at else 1.0
        spike = 0.6 if night == spike_at else 1.0
        records = [throughput_cell(rng, backend("gguf-cpu"), decode=90 * slow, prefill=230 * slow, cv=0.04),
                   throughput_cell(rng, backend("gguf-b"), decode=60 * spike, prefill=200 * spike, cv=0.04),
                   perplexity_cell(np.random.default_rng(7 if night != 3 else 8))]
        paths.append(write_run(root / f"202611{10 + night:02d}-020000", records,
                               started_at=f"2026-11-{10 + night:02d}T02:00:00+00:00"))
    return paths


def test_history_of_nightly_runs_names_the_run_of_the_step(tmp_path, capsys):
    nightly_runs(tmp_path / "nightly")
    assert main(["history", str(tmp_path / "nightly"), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["runs"] == [f"202611{d}-020000" for d in range(10, 18)]
    found = {(t["backend"], t["task"], t["metric"]): t["change_points"] for t in doc["trends"] if t["change_points"]}
    decode = found.pop(("gguf-cpu", "speed", "decode_tok_s"))
    assert [(p["run_id"], p["verdict"]) for p in decode] == [("20261115-020000", "regressed")]
    assert decode[0]["change"] == pytest.approx(-0.3, abs=0.06)
    prefill = found.pop(("gguf-cpu", "speed", "prefill_tok_s"))
    assert [p["run_id"] for p in prefill] == ["20261115-020000"]
    # the same step seen in the latencies, and nothing on gguf-b (one slow night) nor perplexity
    assert {k[0] for k in found} <= {"gguf-cpu"} and {k[2] for k in found} <= {"ttft_s", "itl_p50_s", "itl_p99_s"}

    assert main(["history", *map(str, sorted((tmp_path / "nightly").iterdir())), "--last", "4"]) == 0
    md = capsys.readouterr().out
    assert "regressed: smollm2/gguf-cpu/speed decode_tok_s" in md and "from run `20261115-020000`" in md
    assert "### decode_tok_s" in md and "20261114-020000" in md.split("### decode_tok_s")[1]
    assert "20261113-020000 |" not in md.split("### decode_tok_s")[1]  # --last 4 columns


def test_history_bad_input(tmp_path, capsys):
    paths = nightly_runs(tmp_path / "n", n=3)
    write_run(tmp_path / "other", [perplexity_cell(np.random.default_rng(1))], suite="other")
    assert main(["history", str(paths[0]), str(tmp_path / "other")]) == 2
    assert "history reads runs of one suite" in capsys.readouterr().err
    assert main(["history", str(paths[0])]) == 2
    assert "needs at least two runs" in capsys.readouterr().err
    assert main(["history", str(tmp_path / "missing")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_busy_nights_are_shown_but_left_out_of_change_points_and_the_spread(tmp_path, capsys):
    """Two nights in a row on a busy machine (llama.cpp 3x slower) would be a step at the end of the series;
    flagged busy they are shown, marked, and neither make a change point nor widen the history's σ."""
    from runs import SUITE

    from harness.analysis import noise
    from harness.analysis.gates import Gates
    from harness.results.store import read_run

    paths = []
    for night in range(8):
        rng = np.random.default_rng(300 + night)
        slow = 3.0 if night >= 6 else 1.0
        record = throughput_cell(rng, backend("gguf-cpu"), decode=90 / slow, prefill=230 / slow, cv=0.02)
        if night >= 6:
            record["resolved"]["contention"] = {"verdict": "busy", "reasons": ["other processes used 1.8 of 2 cores"]}
        paths.append(write_run(tmp_path / SUITE / f"202611{10 + night:02d}-020000", [record],
                               started_at=f"2026-11-{10 + night:02d}T02:00:00+00:00"))
    assert main(["history", str(tmp_path / SUITE), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    decode = next(t for t in doc["trends"] if t["metric"] == "decode_tok_s")
    assert decode["change_points"] == [] and decode["values"][-1] == pytest.approx(30, rel=0.1)
    assert decode["busy"] == [""] * 6 + ["other processes used 1.8 of 2 cores"] * 2
    model_bytes = next(t for t in doc["trends"] if t["metric"] == "model_bytes")
    assert model_bytes["busy"] == [""] * 8  # not a timing: never busy
    assert main(["history", str(tmp_path / SUITE)]) == 0
    assert " (busy)" in capsys.readouterr().out.split("### decode_tok_s")[1]

    runs = [read_run(p) for p in paths]
    gates = Gates({}, {}, {})
    quiet_only = noise.history_before(runs[:6] + runs[7:], runs[7], gates, "h")
    assert noise.history_before(runs, runs[7], gates, "h").spreads == quiet_only.spreads


@pytest.mark.parametrize("last", ["0", "-1", "two"])
def test_last_must_be_a_whole_number_of_runs(last, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # refused by the parser, before any run is read
        main(["history", str(tmp_path), "--last", last])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"harness history: error: argument --last: {last!r}: expected a whole number ≥ 1")


def test_markup_in_names_is_no_html_in_history_and_compare_markdown(tmp_path, capsys):
    """Their markdown lands in CI job summaries and PR comments: a name holding markup stays text there."""
    first, second = hostile_nights(tmp_path / "runs")
    assert main(["history", str(tmp_path / "runs")]) == 0
    assert main(["compare", str(first), str(second), "--all"]) in (0, 1)
    out = capsys.readouterr().out
    assert "x'>&lt;img src=x" in out and f"`{XSS}`" in out  # as text, or inside a code span (inert)
    text = re.sub(r"(`+).*?\1", "", out)
    for crafted in (XSS, SCRIPT_XSS, "<img", "<script"):
        assert crafted not in text, crafted
