"""The throughput task's arithmetic on a tiny backend whose clock is scripted, so every figure is known
by hand; prompts of exact lengths; the prompt-length sweep becomes cells."""

import math

import numpy as np
import pytest
from tiny_backend import UnigramBackend

from harness.core import stats
from harness.sources.corpora import Corpus
from harness.tasks.throughput import ThroughputSettings, ThroughputTask
from suites import write_suite

PROBS = {"a": 0.5, "b": 0.25, "c": 0.125, " ": 0.125}


def task(**settings):
    return ThroughputTask(ThroughputSettings(type="throughput", **settings))


def by_name(result):
    return {m.metric: m for m in result.measurements}


def test_figures_follow_the_definitions():
    backend = UnigramBackend(PROBS, bos=True)
    result = task(prompt_tokens=100, new_tokens=11, repeats=3, warmup=2).run(backend, None)
    m = by_name(result)
    assert len(backend.prompts) == 5  # warmup runs happen, and are not reported
    assert m["prefill_tok_s"].value == pytest.approx(100 / 0.1)  # 1 ms per prompt token
    assert m["ttft_s"].value == pytest.approx(0.1 + 0.02)
    assert m["decode_tok_s"].value == pytest.approx(10 / (10 * 0.05))  # (new - 1) / (total - TTFT)
    assert m["itl_p50_s"].value == pytest.approx(0.05) and m["itl_p99_s"].value == pytest.approx(0.05)
    assert m["decode_tok_s"].n == 3 and len(result.samples["itl_s"]) == 3 * 10
    assert result.resolved["prefill_timing"] == "backend"


def test_prefill_falls_back_to_the_first_token_when_the_backend_cannot_separate_it():
    backend = UnigramBackend(PROBS, bos=True)
    backend.reports_prefill = False
    result = task(prompt_tokens=50, new_tokens=4, repeats=1, warmup=0).run(backend, None)
    assert by_name(result)["prefill_tok_s"].value == pytest.approx(50 / (0.05 + 0.02))
    assert result.resolved["prefill_timing"] == "first token"


def test_prompts_have_exact_lengths_from_a_corpus_or_synthetic():
    backend = UnigramBackend(PROBS, bos=True)
    corpus = Corpus(name="t", source="t", text="abc ab a" * 20, sha256="")
    task(prompt_tokens=17, new_tokens=2, repeats=1, warmup=0).run(backend, corpus)
    bos = backend.tokenizer.bos_id
    assert backend.prompts[-1] == [bos] + backend.tokenizer.encode(corpus.text)[:16].tolist()
    task(prompt_tokens=40, new_tokens=2, repeats=1, warmup=0).run(backend, None)
    synthetic = backend.prompts[-1]
    assert len(synthetic) == 40 and synthetic[0] == bos and bos not in synthetic[1:]
    with pytest.raises(ValueError, match="fewer than a 1000-token prompt"):
        task(prompt_tokens=1000, new_tokens=2, repeats=1, warmup=0).run(backend, corpus)


def test_prompt_length_list_expands_into_cells():
    variants = ThroughputSettings(type="throughput", prompt_tokens=[128, 512]).variants()
    assert [(suffix, v.prompt_tokens) for suffix, v in variants] == [(".p128", 128), (".p512", 512)]
    with pytest.raises(ValueError, match="at least 1 token"):
        ThroughputSettings(type="throughput", prompt_tokens=[0])


def test_median_ci_is_the_order_statistic_interval():
    median, low, high = stats.median_ci([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (median, low, high) == (3.0, 1.0, 5.0)  # n = 5: P(all on one side) = 2/32 -> 93.75%
    values = np.arange(20.0)
    median, low, high = stats.median_ci(values)
    assert median == 9.5 and (low, high) == (5.0, 14.0)  # binomial(20, 1/2) 2.5% quantile is 6
    assert all(math.isnan(x) for x in stats.median_ci([1.0, 2.0])[1:])


def test_interleaved_cells_run_round_robin_and_merge(tmp_path):
    """Two interleaved cells of the n-gram: round r of both before round r + 1 of either, each round a
    fresh process with one measured repeat; the merged record has every round's samples."""
    import json

    import pandas as pd

    from harness.cli import main

    speed = {"type": "throughput", "new_tokens": 8, "repeats": 3, "warmup": 0, "interleave": True}
    suite = {"name": "inter", "models": {"ng": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "backends": {"ngram": {"type": "ngram"}},
             "tasks": {"short": {**speed, "prompt_tokens": 8}, "long": {**speed, "prompt_tokens": 64}},
             "matrix": [{"model": "ng", "backend": "ngram", "task": ["short", "long"]}]}
    path = write_suite(tmp_path, suite)
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    logs = sorted((out / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime_ns)
    ids = {p.name.split(".")[0] for p in logs}
    assert len(logs) == 6 and len(ids) == 2
    rounds = [int(p.name.split(".")[1][len("round"):]) for p in logs]
    assert rounds == [0, 0, 1, 1, 2, 2]
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table.task.unique()) == ["long", "short"] and (table.status == "ok").all()
    decode = table[table.metric == "decode_tok_s"]
    assert decode.n.tolist() == [3, 3]
    record = json.loads(next(p for p in (out / "cells").glob("*.json") if p.name.count(".") == 1).read_text())
    assert record["resolved"]["rounds"] == 3 and len(record["samples"]["load_s"]) == 3
    assert len(record["samples"]["itl_s"]) == 3 * 7
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0  # nothing left to run
    assert len(list((out / "logs").glob("*.log"))) == 6
