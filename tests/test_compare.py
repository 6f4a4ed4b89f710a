"""harness compare: cells matched by names, timings judged by ratio and significance, deterministic metrics
by tolerance, verdicts worst first, exit codes 0 / 1 / 2."""

import itertools
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from runs import backend, failed_cell, perplexity_cell, throughput_cell, write_run

from harness.analysis import compare
from harness.analysis.gates import Gates
from harness.cli import main
from harness.results import store as results
from harness.results.records import SKIPPED, read_cell_records, write_cell_record
from harness.results.store import read_run
from harness.suite.parse import parse_suite
from harness.tasks import METRICS

PPL_SEED = 7  # the same per-window NLL every night: perplexity is deterministic for an unchanged tree


def night(path, seed, slow=1.0, nll_factor=1.0, threads=2, quant=None, extra=(), **kw):
    """A run: two throughput cells in 5 interleaved rounds each (5 processes) and two perplexity cells."""
    rng = np.random.default_rng(seed)
    fast = backend("gguf-cpu", n_threads=threads)
    records = [
        throughput_cell(rng, fast, decode=90 / slow, prefill=230 / slow, interleaved=True),
        throughput_cell(rng, backend("gguf-b"), decode=60, prefill=200, interleaved=True),
        perplexity_cell(np.random.default_rng(PPL_SEED), backend("hf-cpu", **({"quant": quant} if quant else {})),
                        nll=3.38 * nll_factor),
        perplexity_cell(np.random.default_rng(PPL_SEED + 1), fast),
        *extra,
    ]
    return write_run(path, records, **kw)


def rows(result, verdict=None):
    return [r for r in result.rows if verdict is None or r.verdict == verdict]


def test_unchanged_tree_with_timing_noise_is_no_regression(tmp_path, capsys):
    # 20 pairs of nights with 5% noise in every round: no false alarm at asv's thresholds
    for seed in range(20):
        a, b = night(tmp_path / f"a{seed}", 2 * seed), night(tmp_path / f"b{seed}", 2 * seed + 1)
        assert main(["compare", str(a), str(b)]) == 0
        out = capsys.readouterr().out
        assert "No regression." in out
    result = compare.compare(read_run(a), read_run(b), Gates({}, {}, {}))
    assert {r.verdict for r in result.rows} == {"unchanged"}
    assert all(r.note == "" for r in result.rows), "run-time measurements (memory, cache hits) are not settings"
    decode = next(r for r in result.rows if r.metric == "decode_tok_s" and r.backend == "gguf-cpu")
    # 5 vs 5 processes: too few for the U test at 0.002
    assert decode.test in ("CIs over processes (5 vs 5) overlap", "CIs over processes (5 vs 5) disjoint")
    assert decode.gate == "ratio ≥ 1.1 (not calibrated) and significant"
    assert "Timing thresholds are not calibrated" in out


def test_slower_cell_and_worse_quantization_are_both_flagged(tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    b = night(tmp_path / "b", 2, slow=1.3, threads=1, nll_factor=1.02, quant="nf4")
    assert main(["compare", str(a), str(b), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    regressed = {(r["backend"], r["task"], r["metric"]) for r in doc["rows"] if r["verdict"] == "regressed"}
    assert {("gguf-cpu", "speed", "decode_tok_s"), ("gguf-cpu", "speed", "prefill_tok_s"),
            ("hf-cpu", "ppl", "token_ppl"), ("hf-cpu", "ppl", "bits_per_byte")} <= regressed
    assert not any(b == "gguf-b" for b, _, _ in regressed)
    assert doc["regressions"] == len([r for r in doc["rows"] if r["verdict"] in ("regressed", "failed")])
    # the worst first: the first rows are regressions, ordered by how much worse
    verdicts = [r["verdict"] for r in doc["rows"]]
    assert verdicts == sorted(verdicts, key=compare.VERDICTS.index)
    worse = [r["worse_by"] for r in doc["rows"] if r["verdict"] == "regressed"]
    assert worse == sorted(worse, reverse=True)
    decode = next(r for r in doc["rows"] if r["metric"] == "decode_tok_s" and r["backend"] == "gguf-cpu")
    assert decode["note"] == "backend.n_threads: 2 → 1"
    ppl = next(r for r in doc["rows"] if r["metric"] == "token_ppl" and r["backend"] == "hf-cpu")
    assert ppl["note"] == "backend.quant: None → nf4"
    assert ppl["change"] == pytest.approx(ppl["new"] / ppl["base"] - 1)

    assert main(["compare", str(a), str(b)]) == 1
    md = capsys.readouterr().out
    assert "**Regression.**" in md
    table = [line for line in md.splitlines() if line.startswith("| regressed")]
    assert "decode_tok_s" in "".join(table) and "token_ppl" in "".join(table)


def exact_mwu_p(a, b):
    """Two-sided exact Mann-Whitney p-value by enumerating every split of the pooled samples (no ties)."""
    pooled = np.concatenate([a, b])
    ranks = pooled.argsort().argsort() + 1
    observed = ranks[:len(a)].sum()
    mean = len(a) * (len(pooled) + 1) / 2
    sums = np.array([ranks[list(c)].sum() for c in itertools.combinations(range(len(pooled)), len(a))])
    return np.mean(np.abs(sums - mean) >= abs(observed - mean) - 1e-9)


def test_significance_follows_asv_rule_on_one_figure_per_process():
    rng = np.random.default_rng(3)
    a, b = rng.normal(100, 3, 7), rng.normal(80, 3, 7)
    sig, test, p = compare.significance(a, b, alpha=0.002)
    assert p == pytest.approx(exact_mwu_p(a, b), rel=1e-9)
    assert sig is True and test.startswith("Mann-Whitney U (7 vs 7 processes)")
    # 5 vs 5: the smallest two-sided p is 2/252 > 0.002, so the order-statistic CIs (min..max of 5) decide
    low = np.array([95.0, 97, 100, 103, 105])
    sig, test, p = compare.significance(low, np.array([78.0, 80, 81, 82, 83]), alpha=0.002)
    assert (sig, test, p) == (True, "CIs over processes (5 vs 5) disjoint", None)
    sig, _, _ = compare.significance(low, np.array([78.0, 80, 81, 82, 96]), alpha=0.002)
    assert sig is False
    # a single process has no CI across processes: however many repeats it ran, nothing can be shown
    for one in (np.array([80.0]), np.array([])):
        assert compare.significance(low, one, 0.002) == (None, f"5 vs {len(one)} processes: untestable", None)
    base = pd.Series({"value": 100.0, "ci_low": np.float64(99), "ci_high": np.float64(101)})
    new = pd.Series({"value": 70.0, "ci_low": np.float64(69), "ci_high": np.float64(71)})
    judged = compare.judge(METRICS["decode_tok_s"].gate, True, base, new, np.array([100.0]), np.array([70.0]), 0.002)
    assert (judged["verdict"], judged["test"]) == ("changed", "1 vs 1 processes: untestable")


def test_the_process_is_the_unit_of_replication(tmp_path):
    """Seven repeats in one process each, 1% apart, and a 17% drift of the machine between the runs: the
    per-repeat test called it significant (the issue's false alarm); one process each cannot."""
    rng = np.random.default_rng(11)
    a = write_run(tmp_path / "a", [throughput_cell(rng, decode=132.8, prefill=403.3, cv=0.01, repeats=7)])
    b = write_run(tmp_path / "b", [throughput_cell(rng, decode=115.3, prefill=344.6, cv=0.01, repeats=7)])
    samples = read_run(a).samples
    per_repeat = samples[samples["sample"] == "decode_tok_s"]["value"].to_numpy()
    assert len(per_repeat) == 7, "the per-repeat samples stay in the run for the report"
    result = compare.compare(read_run(a), read_run(b), Gates({}, {}, {}))
    decode = next(r for r in result.rows if r.metric == "decode_tok_s")
    assert (decode.verdict, decode.test) == ("changed", "1 vs 1 processes: untestable")
    assert result.regressions == 0
    assert compare.processes(read_run(a).results.iloc[0]["params"]) == 1
    # the same drift measured in 7 interleaved rounds each: the rounds agree, so it is significant; only a
    # history of the machine's night-to-night spread can tell it from a regression (tests/test_noise_gates.py)
    c = write_run(tmp_path / "c", [throughput_cell(rng, decode=132.8, prefill=403.3, cv=0.01, repeats=7,
                                                   interleaved=True)])
    d = write_run(tmp_path / "d", [throughput_cell(rng, decode=115.3, prefill=344.6, cv=0.01, repeats=7,
                                                   interleaved=True)])
    assert compare.processes(read_run(c).results.iloc[0]["params"]) == 7
    decode = next(r for r in compare.compare(read_run(c), read_run(d), Gates({}, {}, {})).rows
                  if r.metric == "decode_tok_s")
    assert decode.verdict == "regressed" and decode.test.startswith("Mann-Whitney U (7 vs 7 processes)")


def test_ratio_below_threshold_is_unchanged_even_if_significant(tmp_path):
    rng = np.random.default_rng(0)
    samples = rng.normal(100, 0.5, 12)
    base = {"value": 100.0, "ci_low": 99.5, "ci_high": 100.5}
    new = {"value": 95.0, "ci_low": 94.5, "ci_high": 95.5}
    policy = METRICS["decode_tok_s"].gate
    judged = compare.judge(policy, True, base, new, samples, samples * 0.95, alpha=0.002)
    assert judged["verdict"] == "unchanged" and judged["p_value"] < 1e-4  # 5% < the 10% threshold
    judged = compare.judge(policy, True, base, {**new, "value": 85.0}, samples, samples * 0.85, alpha=0.002)
    assert judged["verdict"] == "regressed" and judged["worse_by"] == pytest.approx(100 / 85)
    judged = compare.judge(policy, True, base, {**new, "value": 120.0}, samples, samples * 1.2, alpha=0.002)
    assert judged["verdict"] == "improved"
    # one measurement each, no CI: past the threshold it is shown as changed, never gated
    one = {"value": 100.0, "ci_low": None, "ci_high": None}
    judged = compare.judge(METRICS["scored_tok_s"].gate, True, one, {**one, "value": 70.0}, [], [], alpha=0.002)
    assert judged["verdict"] == "changed" and judged["test"] == "0 vs 0 processes: untestable"
    judged = compare.judge(METRICS["scored_tok_s"].gate, True, one, {**one, "value": 90.0}, [], [], alpha=0.002)
    assert judged["verdict"] == "unchanged"
    ppl = METRICS["token_ppl"].gate
    for factor, verdict in ((1.0005, "unchanged"), (1.005, "regressed"), (0.99, "improved")):
        judged = compare.judge(ppl, False, {"value": 10.0}, {"value": 10 * factor}, [], [], 0.002)
        assert judged["verdict"] == verdict, factor


def test_gates_from_the_suite_and_the_command_line(tmp_path, capsys):
    gates = {"decode_tok_s": {"threshold": 1.5}, "prefill_tok_s": {"threshold": 1.5},
             "ttft_s": {"threshold": 1.5}, "itl_p50_s": {"threshold": 1.5}, "itl_p99_s": {"threshold": 1.5}}
    a = night(tmp_path / "a", 1, gates=gates)
    b = night(tmp_path / "b", 2, slow=1.3, gates=gates)
    assert main(["compare", str(a), str(b)]) == 0  # the suite tolerates 50%
    capsys.readouterr()
    assert main(["compare", str(a), str(b), "--threshold", "decode_tok_s=1.2"]) == 1
    out = capsys.readouterr().out
    assert "decode_tok_s" in out and "prefill_tok_s" not in out.split("unchanged rows")[0].split("Regression")[1]
    c = night(tmp_path / "c", 3, nll_factor=1.0015)  # nll and bits/byte +0.15%, token_ppl +0.5%
    assert main(["compare", str(a), str(c), "--tolerance", "0.01", "--tolerance", "peak_rss_mb=0.1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(a), str(c), "--tolerance", "token_ppl=0.01"]) == 1  # bits_per_byte still 0.1%


def test_failed_missing_and_new_cells(tmp_path, capsys):
    broken = backend("gguf-broken")
    cuda = backend("hf-cuda")
    a = night(tmp_path / "a", 1, extra=[perplexity_cell(np.random.default_rng(1), broken),
                                        perplexity_cell(np.random.default_rng(2), cuda)])
    b = night(tmp_path / "b", 2, extra=[failed_cell(broken),
                                        failed_cell(cuda, SKIPPED, "device cuda: no CUDA device"),
                                        perplexity_cell(np.random.default_rng(3), backend("gguf-new"))])
    assert main(["compare", str(a), str(b), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    by_backend = {r["backend"]: r for r in doc["rows"] if r["metric"] is None}
    assert by_backend["gguf-broken"]["verdict"] == "failed"
    assert "crashed" in by_backend["gguf-broken"]["note"]
    assert by_backend["hf-cuda"]["verdict"] == "missing"
    assert "no CUDA device" in by_backend["hf-cuda"]["note"]
    assert by_backend["gguf-new"]["verdict"] == "new"
    assert doc["rows"][0]["verdict"] == "failed"
    assert doc["counts"]["failed"] == 1 and doc["regressions"] == 1


def test_counts_that_differ_are_noted_not_gated(tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    b = night(tmp_path / "b", 1)
    table = read_cell_records(b)
    for record in table:
        for m in record.measurements:
            if m["metric"] == "tokens_scored":
                m["value"] -= 16
        write_cell_record(b, record)
    results.write_tables(b, "b")
    assert main(["compare", str(a), str(b), "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    counted = [r for r in doc["rows"] if r["metric"] == "tokens_scored"]
    assert {r["verdict"] for r in counted} == {"changed"}
    assert all("tokens_scored 4,096 → 4,080" in r["note"] for r in doc["rows"] if r["task"] == "ppl")


def test_bad_input_is_exit_2(tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    other = night(tmp_path / "other", 2, suite="other-suite")
    assert main(["compare", str(a), str(other)]) == 2
    err = capsys.readouterr().err.strip()
    assert "suite 'nightly'" in err and "suite 'other-suite'" in err and len(err.splitlines()) == 1
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    assert "nope: not a run directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(a), str(tmp_path / "empty")]) == 2
    assert "run.json: not found" in capsys.readouterr().err
    assert main(["compare", str(a), str(a), "--threshold", "0.9"]) == 2
    assert "--threshold 0.9: expected a finite number > 1" in capsys.readouterr().err
    assert main(["compare", str(a), str(a), "--tolerance", "nope=0.1"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("option", ["--threshold nan", "--threshold inf", "--threshold decode_tok_s=nan",
                                    "--tolerance nan", "--tolerance inf"])
def test_gate_overrides_must_be_finite(option, tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    flag, value = option.split()
    assert main(["compare", str(a), str(a), f"{flag}={value}"]) == 2
    bound = "> 1" if flag == "--threshold" else "≥ 0"
    assert capsys.readouterr().err.strip() == f"harness: error: {flag} {value}: expected a finite number {bound}"


@pytest.mark.parametrize("alpha", ["2", "1", "0", "-0.1", "nan", "inf", "abc"])
def test_alpha_must_be_a_number_between_0_and_1(alpha, tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    with pytest.raises(SystemExit) as exit_:
        main(["compare", str(a), str(a), "--alpha", alpha])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"harness compare: error: argument --alpha: {alpha!r}: expected a number between 0 and 1")


def test_a_results_table_with_text_where_numbers_belong_is_refused_naming_the_column(tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    b = night(tmp_path / "b", 2)
    table = pd.read_parquet(b / "results.parquet")
    table["value"] = table["value"].map(lambda v: f"{v:.3f}")  # "12.500": reads, compares and sorts as text
    table.to_parquet(b / "results.parquet", index=False)
    for argv in (["compare", str(a), str(b)], ["report", str(b), "--format", "pytest-benchmark"]):
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == (f"harness: error: {b / 'results.parquet'}: column 'value' holds "
                                                   f"str values ('{table['value'][0]}'), expected numbers")


@pytest.mark.parametrize("gates, expected", [
    ({"nope": {"tolerance": 0.1}}, "gates: nope: unknown metric"),
    ({"token_ppl": {"threshold": 1.2}}, "token_ppl: a deterministic metric is gated by tolerance"),
    ({"decode_tok_s": {"tolerance": 0.2}}, "decode_tok_s: a timing is gated by threshold"),
    ({"decode_tok_s": {"threshold": 0.8}}, "gates.decode_tok_s.threshold: Input should be greater than 1"),
    ({"token_ppl": {}}, "expected threshold, k or runs (timings) or tolerance"),
    ({"token_ppl": {"k": 3}}, "token_ppl: a deterministic metric is gated by tolerance / abs_tolerance, not threshold"),
    ({"timings": {"tolerance": 0.1}}, "timings: a timing is gated by threshold (a ratio > 1), k and runs"),
    ({"timings": {"runs": 3}}, "gates.timings.runs: Input should be greater than or equal to 5"),
    ({"decode_tok_s": {"k": 0}}, "gates.decode_tok_s.k: Input should be greater than 0"),
])
def test_suite_gates_are_validated(tmp_path, gates, expected):
    from harness.core.errors import UserError
    from suites import smollm2_suite

    path = smollm2_suite(tmp_path, gates=gates)
    with pytest.raises(UserError, match=None) as err:
        parse_suite(path)
    assert expected in str(err.value)


def test_exports_of_the_new_run(tmp_path, capsys):
    a = night(tmp_path / "a", 1)
    assert main(["compare", str(a), str(a), "--format", "github-action-benchmark"]) == 0
    doc = json.loads(capsys.readouterr().out)
    bigger = {e["name"]: e for e in doc["customBiggerIsBetter"]}
    smaller = {e["name"]: e for e in doc["customSmallerIsBetter"]}
    table = read_run(a).results
    decode = table[(table.metric == "decode_tok_s") & (table.backend == "gguf-cpu")].iloc[0]
    assert bigger["smollm2/gguf-cpu/speed decode_tok_s"]["value"] == decode.value
    assert bigger["smollm2/gguf-cpu/speed decode_tok_s"]["unit"] == "tokens/s"
    assert "smollm2/hf-cpu/ppl token_ppl" in smaller and "smollm2/hf-cpu/ppl tokens_scored" not in smaller

    out = tmp_path / "pb.json"
    assert main(["report", str(a), "--format", "pytest-benchmark", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    bench = {b["name"]: b for b in doc["benchmarks"]}
    entry = bench["smollm2/gguf-cpu/speed:1/decode_tok_s"]
    samples = read_run(a).samples
    raw = samples[(samples.cell_id == decode.cell_id) & (samples["sample"] == "decode_tok_s")]["value"]
    assert entry["stats"]["rounds"] == 5
    assert entry["stats"]["mean"] == pytest.approx(np.mean(1 / raw))
    assert entry["stats"]["median"] == pytest.approx(1 / decode.value)  # odd count: the median inverts exactly
    assert bench["smollm2/gguf-cpu/speed:ttft_s"]["stats"]["data"] == pytest.approx(
        samples[(samples.cell_id == decode.cell_id) & (samples["sample"] == "ttft_s")]["value"].tolist())
    # pytest-benchmark itself reads the file and tabulates it
    shown = subprocess.run([sys.executable, "-c", "import sys; from pytest_benchmark.cli import main; "
                            "sys.argv = ['pytest-benchmark', 'compare', sys.argv[1]]; main()", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "1/decode_tok_s" in shown.stdout and "ttft_s" in shown.stdout


def test_real_runs_of_a_tiny_suite(tmp_path, capsys):
    """The whole path on real runs: the n-gram backend scoring the built-in corpus, twice unchanged (the
    deterministic rows agree exactly), then with a lower order under the same model name (flagged)."""
    import yaml

    def suite(order):
        path = tmp_path / f"order{order}.yaml"
        path.write_text(yaml.safe_dump({
            "name": "tiny", "models": {"words": {"ngram": {"order": order, "train": "builtin:stdlib-docs#train"}}},
            "backends": {"ngram": {"type": "ngram"}}, "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
            "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 256}},
            "matrix": [{"model": "words", "backend": "ngram", "task": "ppl"}]}))
        return path

    for name, order in (("a", 4), ("b", 4), ("c", 2)):
        assert main(["run", str(suite(order)), "--out", str(tmp_path / name)]) == 0
    capsys.readouterr()
    main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "json", "--all"])
    doc = json.loads(capsys.readouterr().out)
    quality = {r["metric"]: r for r in doc["rows"] if r["metric"] in ("token_ppl", "bits_per_byte", "model_bytes")}
    assert {r["verdict"] for r in quality.values()} == {"unchanged"}
    assert quality["token_ppl"]["base"] == quality["token_ppl"]["new"]
    assert all(r["note"] == "" for r in doc["rows"]), "the second run loads the cached model: not a setting"

    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "c"), "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    ppl = next(r for r in doc["rows"] if r["metric"] == "token_ppl")
    assert ppl["verdict"] == "regressed" and ppl["new"] > ppl["base"]
    assert "model.ngram.order: 4 → 2" in ppl["note"]


def busy(record: dict, reason: str = "other processes used 1.7 of 2 cores") -> dict:
    """A record whose timed section the worker judged busy."""
    record["resolved"]["contention"] = {"verdict": "busy", "reasons": [reason], "cores": 2, "other_cores": 1.7}
    return record


def test_a_busy_machine_on_either_side_is_not_comparable_and_does_not_gate(tmp_path, capsys):
    """The issue's nightly: tonight a neighbour made llama.cpp 3x slower. The 7 rounds agree, so the figures
    alone say regressed; the verdict is not comparable, the exit code 0 unless --require-quiet (5), and a
    metric that is not a timing (perplexity) is still judged."""
    rng = np.random.default_rng(21)
    a = write_run(tmp_path / "a", [throughput_cell(rng, decode=90, prefill=230, cv=0.01, repeats=7, interleaved=True),
                                   perplexity_cell(np.random.default_rng(PPL_SEED))])
    b = write_run(tmp_path / "b", [busy(throughput_cell(rng, decode=30, prefill=120, cv=0.01, repeats=7,
                                                        interleaved=True)),
                                   perplexity_cell(np.random.default_rng(PPL_SEED), nll=3.38 * 1.02)])
    result = compare.compare(read_run(a), read_run(b), Gates({}, {}, {}))
    decode = next(r for r in result.rows if r.metric == "decode_tok_s")
    assert (decode.verdict, decode.ignoring_busy) == ("not comparable (machine busy)", "regressed")
    assert decode.busy == "machine busy: NEW: other processes used 1.7 of 2 cores"
    assert not any(r.verdict in ("regressed", "improved") for r in result.rows if r.task == "speed")
    assert {r.metric for r in result.rows if r.verdict == "regressed"} == {"token_ppl", "bits_per_byte", "nll_mean"}
    assert next(r for r in result.rows if r.metric == "model_bytes" and r.task == "speed").verdict == "unchanged"

    c = write_run(tmp_path / "c", [throughput_cell(rng, decode=30, prefill=120, cv=0.01, repeats=7, interleaved=True)])
    d = write_run(tmp_path / "d", [busy(throughput_cell(rng, decode=30, prefill=120, cv=0.01, repeats=7,
                                                        interleaved=True))])
    assert main(["compare", str(a), str(c), "--no-history"]) == 1  # the same slowdown on a quiet machine gates
    capsys.readouterr()
    assert main(["compare", str(a), str(d), "--no-history"]) == 0
    out = capsys.readouterr().out
    assert "No regression." in out and "timing rows not comparable: the machine was busy" in out
    assert "| not comparable (machine busy) | smollm2/gguf-cpu/speed | decode_tok_s" in out
    assert main(["compare", str(d), str(a), "--no-history", "--format", "json", "--require-quiet"]) == 5
    doc = json.loads(capsys.readouterr().out)
    assert doc["regressions"] == 0 and doc["not_comparable"] == doc["counts"]["not comparable (machine busy)"] > 0
    row = next(r for r in doc["rows"] if r["metric"] == "decode_tok_s")
    assert row["busy"].startswith("machine busy: BASE:") and row["ignoring_busy"] == "improved"
    assert main(["compare", str(a), str(b), "--no-history", "--require-quiet"]) == 1  # a regression still wins
    capsys.readouterr()
    assert compare.settings_diff(read_run(a).results.iloc[0]["params"], read_run(d).results.iloc[0]["params"]) == []
