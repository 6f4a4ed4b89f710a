"""The ngram backend through the real runner: trains once, caches, scores beside an LLM on the same
tokens, refuses perplexity for stupid back-off, generates."""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import SMOLLM2_PKG

from harness.backends.ngram.backend import NgramBackend, NgramSettings
from harness.cli import main
from harness.core.decoding import Decoding
from harness.sources.corpora import DatasetSpec, load_corpus, stdlib_docs
from harness.sources.models import ModelSpec, resolve_ngram

pytestmark = pytest.mark.ngram

DOCS = "builtin:stdlib-docs#train"


def write_suite(tmp_path: Path, models: dict, matrix: list, name="ng") -> Path:
    suite = {"name": name, "models": models,
             "backends": {"ngram": {"type": "ngram"}, "gguf": {"type": "llamacpp", "n_threads": 2}},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 256}},
             "matrix": matrix}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def table(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


def metric(df, model, name):
    return df[(df.model == model) & (df.metric == name)].value.item()


def test_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))  # trained here, not by an earlier test
    path = write_suite(tmp_path, {"w3": {"ngram": {"order": 3, "train": DOCS}},
                                  "sb": {"ngram": {"order": 3, "train": DOCS, "smoothing": "stupid-backoff"}}},
                       [{"model": ["w3", "sb"], "backend": "ngram", "task": "ppl"}])
    assert main(["run", str(path), "--out", str(tmp_path / "a")]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "b")]) == 0
    a, b = table(tmp_path / "a"), table(tmp_path / "b")
    assert metric(a, "w3", "token_ppl") == metric(b, "w3", "token_ppl")
    assert 1 < metric(a, "w3", "token_ppl") < 5000
    # every byte of the test text is scored once (trailing whitespace aside)
    assert metric(a, "w3", "bytes_scored") == len(stdlib_docs("test").rstrip().encode())
    cells = {p.name: yaml.safe_load(p.read_text()) for p in (tmp_path / "a" / "cells").glob("*.json")}
    details = [c["resolved"]["backend"] for c in cells.values() if c["status"] == "ok"]
    assert details[0]["trained_now"] is True and details[0]["order"] == 3
    again = [yaml.safe_load(p.read_text()) for p in (tmp_path / "b" / "cells").glob("*.json")]
    assert [c["resolved"]["backend"]["trained_now"] for c in again if c["status"] == "ok"] == [False]
    skipped = [c for c in cells.values() if c["status"] == "skipped"]
    assert len(skipped) == 1 and "not a normalized distribution" in skipped[0]["reason"]


@pytest.mark.integration
def test_two_runs_started_together_on_a_fresh_cache_train_the_model_once(tmp_path):
    """Two runs sharing one HARNESS_CACHE, started at once, as separate processes: both finish, one trains the
    model, the other waits for it (or finds it) and scores with the same counts."""
    path = write_suite(tmp_path, {"w3": {"ngram": {"order": 3, "train": DOCS}}},
                       [{"model": "w3", "backend": "ngram", "task": "ppl"}])
    env = {**os.environ, "HARNESS_CACHE": str(tmp_path / "cache")}
    runs = [subprocess.Popen([sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for out in "ab"]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    records = [json.loads(p.read_text()) for out in "ab" for p in (tmp_path / out / "cells").glob("*.json")]
    assert sorted(r["resolved"]["backend"]["trained_now"] for r in records) == [False, True]
    assert metric(table(tmp_path / "a"), "w3", "token_ppl") == metric(table(tmp_path / "b"), "w3", "token_ppl")


def test_a_truncated_trained_model_is_trained_again_not_fatal(tmp_path, monkeypatch, capsys):
    """A cut-short .npz (a full disk, an interrupted copy) used to fail every later cell with a BadZipFile that
    named no file: it is trained again, with one line naming it."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    first = loaded_backend(tmp_path, order=2)
    path = Path(first.model.path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    again = NgramBackend(NgramSettings(type="ngram"), first.model)
    assert again.load(0).details["trained_now"] is True
    assert f"harness: cache entry {path} is damaged (BadZipFile: " in capsys.readouterr().err
    np.testing.assert_array_equal(again.lm.stream, first.lm.stream)
    assert NgramBackend(NgramSettings(type="ngram"), first.model).load(0).details["trained_now"] is False


def test_words_the_vocabulary_lacks_are_counted_with_their_bytes(tmp_path, capsys):
    """A word model scores a word it never saw as one <unk> event, however long; the perplexity cell says how
    many of the scored tokens those were and how many bytes of the text they stand for (the gap before each
    word included, as bits_per_byte counts it), checked against the training words counted here. (The run's
    output is no terminal here, as in a nightly job's log: each finished cell is a line.)"""
    path = write_suite(tmp_path, {"w2": {"ngram": {"order": 2, "train": DOCS, "min_count": 2}}},
                       [{"model": "w2", "backend": "ngram", "task": "ppl"}])
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    assert any(line.startswith("[1/1] w2/ngram/ppl: ok in ") for line in capsys.readouterr().out.splitlines())
    df = table(tmp_path / "out")
    word = re.compile(r"\w+|[^\w\s]")
    counts = Counter(word.findall(stdlib_docs("train")))
    test, unknown, unknown_bytes, end = stdlib_docs("test"), 0, 0, 0
    for m in word.finditer(test):
        if counts[m.group()] < 2:
            unknown += 1
            unknown_bytes += len(test[end:m.end()].encode("utf-8"))
        end = m.end()
    assert 0 < unknown < metric(df, "w2", "tokens_scored")
    assert metric(df, "w2", "unk_tokens") == unknown and metric(df, "w2", "unk_bytes") == unknown_bytes


@pytest.mark.gguf
@pytest.mark.models
def test_model_unit_scores_the_llms_own_tokens(tmp_path):
    path = write_suite(tmp_path, {
        "smollm2": {"gguf": SMOLLM2_PKG},
        "tok4": {"ngram": {"order": 4, "train": DOCS, "unit": "model", "tokenizer": "smollm2"}},
    }, [{"model": "smollm2", "backend": "gguf", "task": "ppl"},
        {"model": "tok4", "backend": "ngram", "task": "ppl"}])
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 0
    df = table(tmp_path / "out")
    assert metric(df, "tok4", "tokens_scored") == metric(df, "smollm2", "tokens_scored")
    assert metric(df, "tok4", "bytes_scored") == metric(df, "smollm2", "bytes_scored")
    assert metric(df, "smollm2", "token_ppl") < metric(df, "tok4", "token_ppl")


@pytest.mark.parametrize("ngram, expected", [
    ({"order": 3, "train": DOCS, "unit": "model"}, "models.m.ngram: unit: model needs `tokenizer`"),
    ({"order": 3, "train": DOCS, "unit": "model", "tokenizer": "nope"},
     "models.m.ngram.tokenizer: model 'nope' is not defined"),
    ({"order": 0, "train": DOCS}, "models.m.ngram.order: Input should be greater than or equal to 1"),
    ({"order": 3, "train": ["file:missing.txt"]}, "models.m.ngram.train[0]: file not found"),
])
def test_bad_ngram_specs_are_refused_before_anything_runs(tmp_path, capsys, ngram, expected):
    path = write_suite(tmp_path, {"m": {"ngram": ngram}}, [{"model": "m", "backend": "ngram", "task": "ppl"}])
    assert main(["run", str(path), "--out", str(tmp_path / "out")]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def loaded_backend(tmp_path, **ngram) -> NgramBackend:
    spec = ModelSpec(ngram={"train": DOCS, **ngram})
    texts = [load_corpus(DOCS, DatasetSpec(source=DOCS), tmp_path).fingerprint()]
    backend = NgramBackend(NgramSettings(type="ngram"), resolve_ngram("m", spec, texts, tmp_path, None, None))
    backend.load(0)
    return backend


def test_generation_greedy_seeded_and_confident(tmp_path):
    backend = loaded_backend(tmp_path, order=3)
    the = backend.tokenizer.prompt("The")
    greedy = backend.generate(the, Decoding(temperature=0), 12)
    assert greedy.tokens == backend.generate(the, Decoding(temperature=0), 12).tokens
    sampled = [backend.generate(the, Decoding(temperature=1.0, top_p=0.9, seed=s), 12).tokens for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] != sampled[2]
    assert len(greedy.max_prob) == len(greedy.entropy) >= len(greedy.tokens) > 0
    # greedy draws from a point mass; the trace keeps the model's own distribution beside it
    assert greedy.max_prob == [1.0] * len(greedy.max_prob) and greedy.entropy == [0.0] * len(greedy.entropy)
    context = [backend.tokenizer.bos_id] + list(backend.tokenizer.encode("The"))
    first = backend.next_distribution(np.array(context))
    step = greedy.steps[0]
    assert greedy.tokens[0] == int(np.argmax(first)) == step["top"][0][0]
    assert step["model_p"] == pytest.approx(first.max()) and step["p"] == 1.0


def test_stupid_backoff_generates_but_never_scores(tmp_path):
    backend = loaded_backend(tmp_path, order=3, smoothing="stupid-backoff")
    assert backend.generate(backend.tokenizer.prompt("The"), Decoding(seed=3), 8).text
    exact = backend.generate(backend.tokenizer.prompt("The"), Decoding(temperature=0), 40, ignore_eos=True)
    assert len(exact.tokens) == len(exact.times) == 40
    with pytest.raises(ValueError, match="not a normalized distribution"):
        backend.score([])
