"""Benchmarks of the harness's own hot paths: n-gram build and query, the window scoring loop, result
writing. ``tox -e bench`` (``pytest tests/bench --benchmark-enable``) times them; the default test run
executes each once, untimed, so they stay correct. No wall-clock bound is asserted anywhere."""

import math

import numpy as np
import pandas as pd
import pytest
from runs import backend, perplexity_cell, throughput_cell, write_run

from harness.backends.ngram.backend import NgramBackend, NgramSettings
from harness.backends.ngram.build import build, training_stream
from harness.backends.ngram.tokenizer import WordTokenizer
from harness.core import windows
from harness.results import store as results
from harness.sources.corpora import DatasetSpec, load_corpus, stdlib_docs
from harness.sources.models import ModelSpec, resolve_ngram

TRAIN = "builtin:stdlib-docs#train"


@pytest.fixture(scope="module")
def word_stream():
    tok, encoded = WordTokenizer.train([stdlib_docs("train")], lowercase=False, min_count=1)
    return tok, training_stream(encoded, tok.bos_id, tok.vocab_size)


def test_ngram_build(benchmark, word_stream):
    tok, stream = word_stream
    model = benchmark.pedantic(build, (stream, 4, tok.vocab_size, tok.bos_id), rounds=3, iterations=1)
    assert model.order == 4
    assert model.unigram().sum() == pytest.approx(1.0)


def test_ngram_query(benchmark, word_stream):
    tok, stream = word_stream
    model = build(stream, 4, tok.vocab_size, tok.bos_id)
    seq = np.concatenate([[tok.bos_id], tok.encode(stdlib_docs("test"))]).astype(np.int64)
    starts, scored = np.zeros(len(seq), np.int64), np.arange(1, len(seq))
    logp = benchmark(model.logprob, seq, starts, scored)
    assert len(logp) == len(seq) - 1 and np.all(np.isfinite(logp)) and np.all(logp <= 0)
    # the query agrees with the model's full next-token distribution at a few positions
    for j in (1, 100, len(seq) - 1):
        dist = model.next_distribution(seq[:j])
        assert math.log(dist[seq[j]]) == pytest.approx(logp[j - 1], rel=1e-9)


@pytest.fixture(scope="module")
def ngram_backend(tmp_path_factory):
    base = tmp_path_factory.mktemp("ngram")
    spec = ModelSpec(ngram={"train": TRAIN, "order": 4})
    texts = [load_corpus(TRAIN, DatasetSpec(source=TRAIN), base).fingerprint()]
    lm = NgramBackend(NgramSettings(type="ngram"), resolve_ngram("w4", spec, texts, base, None, None))
    lm.load(0)
    yield lm
    lm.close()


@pytest.mark.parametrize("scheme", ["chunked", "rolling"])
def test_window_scoring_loop(benchmark, ngram_backend, scheme):
    tok = ngram_backend.tokenizer
    tokens = tok.encode(stdlib_docs("test"))
    cut = {"chunked": lambda: windows.chunked(tokens, 512, tok.bos_id),
           "rolling": lambda: windows.rolling(tokens, 512, tok.bos_id)}[scheme]

    def score():
        return ngram_backend.score(cut())

    logps = benchmark(score)
    wins = cut()
    assert [len(lp) for lp in logps] == [int((w.labels >= 0).sum()) for w in wins]
    if scheme == "rolling":  # every token once
        assert sum(map(len, logps)) == len(tokens)
    assert all(np.all(lp <= 0) for lp in logps)


@pytest.fixture(scope="module")
def run_with_cells(tmp_path_factory):
    rng = np.random.default_rng(0)
    records = [perplexity_cell(rng, backend(f"b{i}")) for i in range(20)]
    records += [throughput_cell(rng, backend(f"b{i}"), repeats=20) for i in range(20)]
    return write_run(tmp_path_factory.mktemp("run") / "run", records)


def test_result_writing(benchmark, run_with_cells):
    frame = benchmark(results.write_tables, run_with_cells, "run")
    assert len(frame) == frame.groupby("cell_id").size().sum() and frame["cell_id"].nunique() == 40
    assert pd.read_parquet(run_with_cells / "results.parquet").equals(frame)
    samples = pd.read_parquet(run_with_cells / "samples.parquet")
    assert (samples.groupby("cell_id").size() > 0).all()
