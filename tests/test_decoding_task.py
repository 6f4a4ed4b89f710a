"""The decoding task: strategies expanded into cells, metrics checked by hand, the entropy-vs-temperature
curve on an n-gram model whose distribution is exact, and whole runs through the runner."""

import json

import numpy as np
import pytest
import yaml

from harness.backends.ngram.backend import NgramBackend, NgramSettings
from harness.core.errors import UserError
from harness.sources.corpora import DatasetSpec, load_corpus
from harness.sources.models import ModelSpec, resolve_ngram
from harness.suite.cells import expand
from harness.suite.parse import parse_suite
from harness.tasks.decoding import DecodingSettings, DecodingTask, distinct_n, passage_prompts, repeated_share
from suites import run_suite, write_suite

DOCS = "builtin:stdlib-docs#train"
PROMPTS = ["The module provides", "To create a new", "This function returns"]


def settings(**kw) -> DecodingSettings:
    return DecodingSettings.model_validate({"type": "decoding", "prompts": PROMPTS, **kw})


def test_metrics_by_hand():
    words = [["a", "b", "a", "b", "a", "b"], ["c", "d"]]
    assert distinct_n(words, 1) == 4 / 8
    assert distinct_n(words, 2) == 3 / 6  # (a b) (b a) (a b) (b a) (a b) | (c d): ab, ba, cd
    assert repeated_share(words[0]) == pytest.approx(1 - 2 / 3)  # abab, baba, abab: one repeat of three
    assert np.isnan(repeated_share(words[1]))


def test_passage_prompts_take_first_sentences_of_prose():
    text = (" = Heading = \n \n The first paragraph has enough words in it. It goes on.\n \n"
            " Too short.\n \n Second paragraph, also long enough to count here ! More.\n")
    assert passage_prompts(text, 5) == ["The first paragraph has enough words in it.",
                                        "Second paragraph, also long enough to count here !"]


def test_strategies_expand_into_named_cells():
    s = settings(strategies=["greedy", {"temperature": [0.3, 1.5]}, {"top_p": 0.9}, {"min_p": 0.05},
                             {"repetition_penalty": 1.3, "temperature": 0}, {"beams": 3}],
                 sampler=["native", "harness"], chat=[False, True])
    names = [suffix for suffix, _ in s.variants()]
    assert len(names) == 7 * 2 * 2 and len(set(names)) == len(names)
    assert ".native.greedy" in names and ".harness.t0.3.chat" in names and ".native.t1-topp0.9" in names
    assert ".native.greedy-rep1.3w64" in names and ".harness.beam3" in names
    one = dict(s.variants())[".harness.t1.5"]
    assert DecodingTask(one)._one()[1:] == ("harness", False)


def test_bad_settings_are_one_line_errors(tmp_path):
    suite = {"name": "d", "models": {"w": {"ngram": {"order": 2, "train": DOCS}}},
             "backends": {"ngram": {"type": "ngram"}},
             "tasks": {"dec": {"type": "decoding", "prompts": ["x"], "samples": 2, "seeds": [1, 2, 3]}},
             "matrix": [{"model": "w", "backend": "ngram", "task": "dec"}]}
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(UserError, match=r"d.yaml: tasks.dec: seeds: expected one seed per sample \(2\), got 3"):
        parse_suite(path)
    suite["tasks"]["dec"] = {"type": "decoding", "prompts": ["x"], "reference": {"model": "nope", "backend": "ngram"}}
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(UserError, match="tasks.dec.reference.model: model 'nope' is not defined"):
        parse_suite(path)


@pytest.fixture(scope="module")
def ngram(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ng")
    spec = ModelSpec(ngram={"order": 3, "train": DOCS})
    text = load_corpus(DOCS, DatasetSpec(source=DOCS), tmp, None).fingerprint()
    model = resolve_ngram("w3", spec, [text], tmp, None, None)
    backend = NgramBackend(NgramSettings(type="ngram"), model)
    backend.load(1024)
    yield backend
    backend.close()


def test_entropy_rises_with_temperature_on_the_ngram(ngram):
    """The n-gram's distribution is exact, so the curve is the model's, not an estimate's."""
    entropy = []
    for t in (0.3, 0.7, 1.0, 1.5):
        task = DecodingTask(settings(strategies=[{"temperature": t}], sampler="harness", samples=4,
                                     max_new_tokens=24))
        values = {m.metric: m.value for m in task.run(ngram, None).measurements}
        entropy.append(values["entropy_mean"])
        assert values["deterministic"] == 1.0
    assert np.all(np.diff(entropy) > 0), entropy


def test_greedy_cell_metrics_and_trace(ngram):
    result = DecodingTask(settings(strategies=["greedy"], samples=2, max_new_tokens=16)).run(ngram, None)
    values = {m.metric: m for m in result.measurements}
    assert values["entropy_mean"].value == 0.0 and values["max_prob_mean"].value == 1.0
    assert values["deterministic"].value == 1.0
    records = [json.loads(line) for line in result.artifacts["generations.jsonl"].splitlines()]
    assert len(records) == len(PROMPTS) * 2
    # greedy: both samples of a prompt are the same text, so distinct-n counts each prompt's words once
    assert records[0]["text"] == records[1]["text"]
    words = [r["text"].split() for r in records[::2]]
    assert values["distinct_1"].value == pytest.approx(distinct_n(words * 2, 1))
    step = records[0]["steps"][0]
    assert step["token"] == step["top"][0][0] and step["p"] == 1.0 and step["piece"] == step["top"][0][2]
    assert values["len_mean"].value == np.mean([len(r["tokens"]) for r in records])
    assert result.resolved["sampler_order"].startswith("repetition penalty -> temperature")


def test_native_and_harness_sampling_agree_on_the_ngram(ngram):
    """The n-gram's native sampler is the harness's: same seed, same tokens."""
    runs = [DecodingTask(settings(strategies=[{"temperature": 1.0, "top_k": 40}], sampler=s, samples=2))
            .run(ngram, None).artifacts["generations.jsonl"] for s in ("native", "harness")]
    assert [json.loads(x)["tokens"] for x in runs[0].splitlines()] == \
           [json.loads(x)["tokens"] for x in runs[1].splitlines()]


def test_a_suite_run_keeps_texts_scores_with_a_reference_and_skips_what_cannot_run(tmp_path):
    suite = {"name": "dec", "models": {"w2": {"ngram": {"order": 2, "train": DOCS}},
                                       "w3": {"ngram": {"order": 3, "train": DOCS}}},
             "backends": {"ngram": {"type": "ngram"}},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"dec": {"type": "decoding", "dataset": "docs", "n_prompts": 2, "samples": 2,
                               "max_new_tokens": 12, "strategies": ["greedy", {"beams": 2}],
                               "reference": {"model": "w3", "backend": "ngram"}}},
             "matrix": [{"model": "w2", "backend": "ngram", "task": "dec"}]}
    parsed, _ = parse_suite(write_suite(tmp_path, suite))
    assert all(c.reference.model == "w3" for c in expand(parsed))
    out, df = run_suite(tmp_path, suite)
    greedy = df[df.task == "dec.native.greedy"].set_index("metric")
    assert 0 < greedy.loc["ref_nll_mean", "value"] < 20 and greedy.loc["ref_nll_mean", "n"] == 4
    beam = df[df.task == "dec.native.beam2"]
    assert beam.status.item() == "skipped" and "no beam search" in beam.reason.item()
    cell = greedy.cell_id.iloc[0]
    lines = (out / "artifacts" / cell / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(x)["text"] for x in lines)
    params = json.loads(greedy.params.iloc[0])
    assert params["reference"]["model"] == "w3" and params["resolved"]["task"]["prompts"][0]


def test_samples_of_different_prompts_draw_different_streams(ngram):
    """Sample j of every prompt must not replay one random stream: at a high temperature a weakly
    conditioned model would otherwise repeat whole continuations across prompts."""
    result = DecodingTask(settings(strategies=[{"temperature": 1.5}], samples=1, max_new_tokens=16)).run(ngram, None)
    records = [json.loads(line) for line in result.artifacts["generations.jsonl"].splitlines()]
    assert len({r["seed"] for r in records}) == len(PROMPTS)
    assert len({tuple(r["tokens"][2:]) for r in records}) == len(PROMPTS)
