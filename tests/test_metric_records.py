"""One record per metric: every metric carries its gate, and a task added outside the harness (here, in this
file) shows in the console summary and is judged by compare without an edit to report/ or analysis/."""

from __future__ import annotations

from typing import Literal

import pytest
from runs import _cell, _record, backend, write_run
from tiny_backend import UnigramBackend

from harness.analysis import compare
from harness.analysis.gates import Gates
from harness.core.gates import COUNT, EXACT, exact
from harness.core.metrics import Measurement, Metric, register
from harness.report.console import family_tables
from harness.results.store import read_run
from harness.sources.corpora import Corpus
from harness.tasks import METRICS, TASKS
from harness.tasks.base import Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task


def test_a_metric_without_a_gate_cannot_be_registered():
    with pytest.raises(TypeError, match="expected a gate"):
        register(Metric("vowel_share", "ratio", True, None))
    with pytest.raises(TypeError):
        Metric("vowel_share", "ratio", True)  # the gate is a required field
    assert "vowel_share" not in METRICS


def test_a_metric_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        register(Metric("token_ppl", "ppl", False, exact(0.001)))


def test_every_metric_has_a_gate_the_five_once_ungated_keep_exact_one_percent():
    assert len(METRICS) == 57
    assert all(m.gate.kind in ("noisy", EXACT, COUNT, "stderr") for m in METRICS.values())
    for name in ("delta_p_mean", "deterministic", "kld_median", "ln_ppl_ratio", "ref_token_ppl"):
        assert METRICS[name].gate == exact(0.01), name


def test_every_task_summary_names_registered_metrics():
    for name, task in TASKS.items():
        assert set(task.summary) <= set(METRICS), name
        assert set(task.overview) <= set(METRICS) and len(task.overview) <= 4, name


# --- a task defined outside harness/: what a contributor writes in harness/tasks/<name>.py -------------------

VOWEL_SHARE = Metric("vowel_share", "ratio", True, exact(0.0, 0.01), short="vowels", fraction=True)


class VowelSettings(TaskSettings):
    type: Literal["vowels"]
    dataset: str


class VowelTask(Task):
    """The share of a text's tokens that are a vowel: a figure of the tokenizer alone."""

    settings_class = VowelSettings
    requires = frozenset()
    summary = ("vowel_share", "model_bytes")

    def context_tokens(self) -> int:
        return 1

    def run(self, backend, corpus: Corpus | None) -> TaskResult:
        tokens = backend.tokenizer.encode(corpus.text)
        vowels = sum(backend.tokenizer.token_bytes(int(t)) in (b"a", b"e", b"i", b"o", b"u") for t in tokens)
        return TaskResult([Measurement("vowel_share", vowels / len(tokens), len(tokens)),
                           Measurement("model_bytes", 1000.0)])


@pytest.fixture
def vowel_task(monkeypatch):
    """Registered as harness/tasks/<name>.py would register it (``@register_task`` and ``register``), for this
    test only: the rest of the session sees the shipped tasks."""
    monkeypatch.setattr(TASKS, "_classes", dict(TASKS._classes))
    before = dict(METRICS)
    register(VOWEL_SHARE)
    yield register_task("vowels")(VowelTask)
    METRICS.clear()
    METRICS.update(before)


def _night(path, probs):
    task = VowelTask(VowelSettings(type="vowels", dataset="wiki"))
    result = task.run(UnigramBackend(probs), Corpus("wiki", "test", "a cab ate a bee", "0" * 64))
    cell = _cell(backend("tiny"), "vowels", {"type": "vowels", "dataset": "wiki"})
    return read_run(write_run(path, [_record(cell, result.measurements, result.samples)]))


def test_a_task_added_outside_the_harness_shows_in_the_console_and_is_gated_by_compare(tmp_path, vowel_task):
    probs = {"a": 0.3, "b": 0.2, "c": 0.1, "e": 0.2, "t": 0.1, " ": 0.1}
    base = _night(tmp_path / "base", probs)
    (family, table), = family_tables(base.results)
    assert family == "vowels"
    assert list(table.columns) == ["model", "backend", "task", "vowels", "model MiB"]
    assert table["vowels"].tolist() == ["46.7%"]  # 7 vowels of 15 tokens, a fraction in percent

    merged = _night(tmp_path / "merged", {**probs, "ca": 0.05})  # "ca" one token: 6 vowels of 14
    result = compare.compare(base, merged, Gates({}, {}, {}))
    row = next(r for r in result.rows if r.metric == "vowel_share")
    assert row.verdict == "regressed"  # higher is better: 0.429 < 0.467, beyond 0.01 absolute
    assert row.gate == "beyond 0 relative and 0.01 absolute"
    loose = Gates({"vowel_share": {"abs_tolerance": 0.1}}, {}, {})
    assert next(r for r in compare.compare(base, merged, loose).rows if r.metric == "vowel_share").verdict == \
        "unchanged"
