"""The lm-eval bridge: the adapter's requests on a tiny unigram model whose every number is known by hand,
lm-eval's own evaluator over the local tasks, and a suite whose lm-eval task expands into cells."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import yaml
from tiny_backend import UnigramBackend

from harness.cli import main
from harness.core.capabilities import GENERATE, LOGITS, SCORE
from harness.core.errors import Unavailable
from harness.core.windows import rolling
from harness.report.console import family_tables
from harness.report.render import write_report
from harness.sources.lmeval_tasks import CLOZE, ROLLING, cloze_docs, rolling_docs, sentences, write_local_tasks
from harness.tasks import TASKS
from harness.tasks.lmeval import measurements_from

pytestmark = pytest.mark.lmeval
lm_eval = pytest.importorskip("lm_eval", reason="needs the lmeval extra (pip install -e '.[lmeval]')")

from lm_eval.api.instance import Instance  # noqa: E402

import harness.lmeval  # noqa: E402, F401  (registers the model with lm-eval)
from harness.lmeval.model import HarnessLM  # noqa: E402


class RecordingUnigram(UnigramBackend):
    """The unigram model, keeping the windows of each call (the order and batches the adapter sent)."""

    type_name = "tiny-unigram"

    def __init__(self, probs, bos=False, capabilities=None):
        super().__init__(probs, bos=bos)
        self.batches: list[list] = []
        if capabilities is not None:
            self.capabilities = capabilities

    def logprobs(self, windows):
        self.batches.append(list(windows))
        yield from super().logprobs(windows)

    def score(self, windows):
        self.batches.append(list(windows))
        return super().score(windows)


def lm_for(backend, **kwargs) -> HarnessLM:
    return HarnessLM(loaded=backend, **kwargs)


def ask(lm: HarnessLM, *pairs) -> list[tuple[float, bool]]:
    return lm.loglikelihood([Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)])


def ids(backend, pieces: list[str]) -> list[int]:
    return [backend.tokenizer.pieces.index(p) for p in pieces]


def test_trailing_space_of_the_context_is_scored_with_the_continuation():
    probs = {"a": 0.4, "b": 0.3, " ": 0.1, " a": 0.2}
    backend = RecordingUnigram(probs)
    [(ll, _)] = ask(lm_for(backend), ("b ", "a"))
    (window,) = backend.batches[0]
    assert window.input_ids.tolist() == ids(backend, ["b"])
    assert window.targets.tolist() == ids(backend, [" a"])  # not " " then "a"
    assert ll == pytest.approx(math.log(0.2), abs=1e-12)


def test_continuation_is_the_joint_encoding_split_at_the_context_length():
    probs = {"a": 0.3, "b": 0.3, "c": 0.2, "bc": 0.2}
    backend = RecordingUnigram(probs)
    [(ll, _)] = ask(lm_for(backend), ("ab", "cc"))  # "abcc" -> a|bc|c; the context alone is a|b
    (window,) = backend.batches[0]
    assert window.input_ids.tolist() == ids(backend, ["a", "b"])  # the context's own tokens, as HFLM feeds them
    assert window.targets.tolist() == ids(backend, ["c"])  # the joint encoding past len(a|b), not c|c
    assert ll == pytest.approx(math.log(0.2), abs=1e-12)


@pytest.mark.parametrize("bos", [True, False])
def test_empty_context_is_the_prefix_token(bos):
    backend = RecordingUnigram({"a": 0.5, "b": 0.5}, bos=bos)
    ask(lm_for(backend), ("", "ab"))
    (window,) = backend.batches[0]
    prefix = backend.tokenizer.bos_id if bos else backend.tokenizer.eos_id
    assert window.input_ids.tolist() == [prefix, *ids(backend, ["a"])]
    assert window.targets.tolist() == ids(backend, ["a", "b"])


def test_a_model_that_adds_bos_gets_it_before_the_context():
    backend = RecordingUnigram({"a": 0.5, "b": 0.5}, bos=True)
    ask(lm_for(backend), ("a", "b"))
    (window,) = backend.batches[0]
    assert window.input_ids.tolist() == [backend.tokenizer.bos_id, *ids(backend, ["a"])]
    assert window.labels.tolist() == [-1, *ids(backend, ["b"])]


def test_long_requests_are_cut_from_the_left_to_max_length():
    backend = RecordingUnigram({"a": 0.3, "b": 0.3, "c": 0.4})
    ask(lm_for(backend, max_length=4), ("abcabc", "ab"))
    (window,) = backend.batches[0]
    whole = ids(backend, list("abcabcab"))
    assert window.input_ids.tolist() == whole[-5:-1]
    assert window.labels.tolist() == [-1, -1, *ids(backend, ["a", "b"])]


def test_requests_run_longest_first_in_batches_and_come_back_in_order():
    probs = {"a": 0.5, "b": 0.3, "c": 0.2}
    backend = RecordingUnigram(probs)
    pairs = [("a", "b"), ("abcab", "cc"), ("ab", "c"), ("abcabcab", "a"), ("abc", "ba")]
    answers = ask(lm_for(backend, batch_size=2), *pairs)
    assert [len(b) for b in backend.batches] == [2, 2, 1]
    lengths = [len(w.input_ids) for batch in backend.batches for w in batch]
    assert lengths == sorted(lengths, reverse=True)
    for (_, continuation), (ll, _) in zip(pairs, answers, strict=True):
        assert ll == pytest.approx(sum(math.log(probs[c]) for c in continuation), abs=1e-12)


def test_is_greedy_when_every_continuation_token_is_the_argmax():
    backend = RecordingUnigram({"a": 0.5, "b": 0.3, "c": 0.2})
    answers = ask(lm_for(backend), ("b", "aa"), ("b", "ab"), ("c", "a"))
    assert [greedy for _, greedy in answers] == [True, False, True]


def test_rolling_scores_every_token_once_in_lm_evals_windows():
    probs = {"a": 0.5, "b": 0.3, "c": 0.2}
    backend = RecordingUnigram(probs, bos=False)
    text = "abcabcaabbcc"
    lm = lm_for(backend, max_length=4)
    [total] = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    assert total == pytest.approx(sum(math.log(probs[c]) for c in text), abs=1e-12)
    expected = rolling(np.array(ids(backend, list(text))), 4, backend.tokenizer.eos_id)
    sent = [w for batch in backend.batches for w in batch]
    assert [(w.input_ids.tolist(), w.labels.tolist()) for w in sent] == [
        (w.input_ids.tolist(), w.labels.tolist()) for w in expected]


def test_generation_is_cut_at_the_first_stop_sequence():
    backend = RecordingUnigram({"ab": 0.5, "a": 0.2, "b": 0.3})  # greedy: "abab..."
    lm = lm_for(backend, max_length=64)
    requests = [Instance("generate_until", {}, ("a", {"until": ["ba"], "max_gen_toks": 5}), 0),
                Instance("generate_until", {}, ("b", {"until": ["zz"], "max_gen_toks": 3}), 1)]
    assert lm.generate_until(requests) == ["a", "ababab"]
    assert backend.prompts == [ids(backend, ["a"]), ids(backend, ["b"])]


@pytest.mark.parametrize("capabilities, call, needs", [
    ({SCORE}, lambda lm: ask(lm, ("a", "b")), "logits"),
    ({LOGITS, GENERATE}, lambda lm: lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("ab",), 0)]),
     "score"),
    ({SCORE, LOGITS}, lambda lm: lm.generate_until([Instance("generate_until", {}, ("a", {"until": []}), 0)]),
     "generate"),
])
def test_a_request_the_backend_cannot_serve_is_refused_with_the_reason(capabilities, call, needs):
    backend = RecordingUnigram({"a": 0.5, "b": 0.5}, capabilities=frozenset(capabilities))
    with pytest.raises(Unavailable, match=f"need capability {needs}, which backend tiny-unigram lacks"):
        call(lm_for(backend))


def test_the_local_tasks_need_what_their_requests_need():
    task = TASKS["lm-eval"]
    settings = task.settings_class(type="lm-eval", tasks=[CLOZE, ROLLING], dataset="d")
    assert [suffix for suffix, _ in settings.variants()] == [f".{CLOZE}", f".{ROLLING}"]
    assert task.requirements(settings.variants()[0][1]) == {SCORE, LOGITS}
    assert task.requirements(settings.variants()[1][1]) == {SCORE}
    assert task.requirements(task.settings_class(type="lm-eval", tasks=["hellaswag"])) == frozenset()
    with pytest.raises(ValueError, match="set dataset"):
        task.settings_class(type="lm-eval", tasks=[CLOZE])


# --- the local tasks --------------------------------------------------------------------------------------

def test_cloze_items_are_deterministic_and_hold_the_true_next_sentence(corpora_dir):
    text = (corpora_dir / "janeausten" / "persuasion.txt").read_text(encoding="utf-8")
    docs = cloze_docs(text, 40, seed=7)
    assert docs == cloze_docs(text, 40, seed=7) and docs != cloze_docs(text, 40, seed=8)
    assert len(docs) == 40
    flat = " ".join(" ".join(block.split()) for block in text.split("\n\n"))
    for doc in docs:
        assert len(doc["choices"]) == 4 and len(set(doc["choices"])) == 4
        true = doc["choices"][doc["gold"]]
        assert f"{doc['context']} {true}" in flat  # the passage and its true continuation, as in the book
    assert Counter(d["gold"] for d in docs).keys() == {0, 1, 2, 3}  # the answer's place is drawn too


def test_sentences_end_after_the_closing_quote():
    assert sentences('"Yes." She went. Was it? "No!" he said.') == ['"Yes."', "She went.", "Was it?", '"No!" he said.']


# --- lm-eval's evaluator on the adapter ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def persuasion(corpora_dir) -> str:
    return (corpora_dir / "janeausten" / "persuasion.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def char_unigram(persuasion) -> RecordingUnigram:
    """Every character of the book with its frequency in it: a model of the text that any piece of it fits."""
    counts = Counter(persuasion)
    total = sum(counts.values())
    return RecordingUnigram({c: n / total for c, n in sorted(counts.items())})


def test_lm_evals_metrics_on_the_local_tasks_equal_a_hand_count(tmp_path, persuasion, char_unigram):
    from lm_eval.tasks import TaskManager

    include = write_local_tasks(tmp_path, persuasion, n=30, seed=3)
    results = lm_eval.simple_evaluate(model=lm_for(char_unigram), tasks=[CLOZE, ROLLING], limit=30,
                                      task_manager=TaskManager(include_path=str(include)), bootstrap_iters=1,
                                      log_samples=False)
    logp = {c: math.log(p) for c, p in char_unigram.probs.items()}

    def ll(text):
        return sum(logp[c] for c in text)

    docs = cloze_docs(persuasion, 30, seed=3)
    scores = [np.array([ll(" " + c) for c in d["choices"]]) for d in docs]
    lengths = [np.array([len(c) for c in d["choices"]], dtype=float) for d in docs]
    acc = np.mean([s.argmax() == d["gold"] for s, d in zip(scores, docs, strict=True)])
    acc_norm = np.mean([(s / n).argmax() == d["gold"] for s, n, d in zip(scores, lengths, docs, strict=True)])
    rows = {m.metric: m for m in measurements_from(results, CLOZE)[0]}
    assert rows["lmeval_acc"].value == pytest.approx(acc) and rows["lmeval_acc"].n == 30
    assert rows["lmeval_acc"].stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 29))
    assert rows["lmeval_acc_norm"].value == pytest.approx(acc_norm)

    texts = [d["text"] for d in rolling_docs(persuasion, 30)]
    total = sum(ll(t) for t in texts)
    words = sum(len(re.split(r"\s+", t)) for t in texts)
    n_bytes = sum(len(t.encode()) for t in texts)
    rows = {m.metric: m for m in measurements_from(results, ROLLING)[0]}
    assert rows["lmeval_word_perplexity"].value == pytest.approx(math.exp(-total / words), rel=1e-9)
    assert rows["lmeval_byte_perplexity"].value == pytest.approx(math.exp(-total / n_bytes), rel=1e-9)
    assert rows["lmeval_bits_per_byte"].value == pytest.approx(-total / n_bytes / math.log(2), rel=1e-9)


def test_unregistered_metrics_and_other_filters_are_kept_aside():
    results = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "acc,strict": 0.4,
                                 "acc_stderr,strict": 0.1, "rouge1,none": 0.3, "rouge1_stderr,none": "N/A"}},
               "n-samples": {"t": {"original": 20, "effective": 10}}}
    rows, unreported = measurements_from(results, "t")
    assert [(m.metric, m.value, m.stderr, m.n) for m in rows] == [("lmeval_acc", 0.5, 0.1, 10)]
    assert unreported == {"acc,strict": 0.4, "rouge1,none": 0.3}


# --- a suite --------------------------------------------------------------------------------------------------

def lmeval_suite(tmp_path, tasks=(CLOZE, ROLLING), models=("w3", "sb")) -> Path:
    suite = {"name": "lme", "models": {
                 "w3": {"ngram": {"order": 3, "train": "builtin:stdlib-docs#train"}},
                 "sb": {"ngram": {"order": 3, "train": "builtin:stdlib-docs#train", "smoothing": "stupid-backoff"}}},
             "backends": {"ngram": {"type": "ngram"}},
             "datasets": {"book": {"source": "corpora:janeausten/persuasion.txt"}},
             "tasks": {"acc": {"type": "lm-eval", "tasks": list(tasks), "dataset": "book", "limit": 12,
                               "local_docs": 12, "max_length": 64}},
             "matrix": [{"model": list(models), "backend": "ngram", "task": "acc"}]}
    path = tmp_path / "lme.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def isolate_home_and_temp(tmp_path, monkeypatch) -> tuple[Path, Path, Path]:
    """(home, temp folder, harness cache) of the cells' processes, each empty, with no HF_* folder set."""
    folders = tmp_path / "home", tmp_path / "tmp", tmp_path / "cache"
    for name, folder in zip(("HOME", "TMPDIR", "HARNESS_CACHE"), folders, strict=True):
        folder.mkdir()
        monkeypatch.setenv(name, str(folder))
    for name in ("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    return folders


def test_a_suite_task_becomes_a_cell_per_lm_eval_task_with_registered_rows(tmp_path, corpora_dir, monkeypatch):
    path = lmeval_suite(tmp_path)
    home, tmp, cache = isolate_home_and_temp(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--corpora", str(corpora_dir)]) == 0
    df = pd.read_parquet(out / "results.parquet")
    ok = df[df["model"] == "w3"]
    assert set(ok["task"]) == {f"acc.{CLOZE}", f"acc.{ROLLING}"} and (ok["status"] == "ok").all()
    cloze = ok[ok["task"] == f"acc.{CLOZE}"].set_index("metric")
    assert 0 <= cloze.loc["lmeval_acc", "value"] <= 1 and cloze.loc["lmeval_acc", "n"] == 12
    assert cloze.loc["lmeval_acc", "stderr"] > 0 and bool(cloze.loc["lmeval_acc", "higher_is_better"])
    rolled = ok[ok["task"] == f"acc.{ROLLING}"].set_index("metric")
    assert {"lmeval_word_perplexity", "lmeval_byte_perplexity", "lmeval_bits_per_byte"} <= set(rolled.index)
    resolved = json.loads(cloze["params"].iloc[0])["resolved"]["task"]
    assert resolved["lmeval_task"] == CLOZE and resolved["task_version"] == 1.0 and len(resolved["config_hash"]) == 16
    skipped = df[df["model"] == "sb"]
    assert (skipped["status"] == "skipped").all()
    assert skipped["reason"].str.contains("backend lacks capability score").all()
    # datasets' tables of the local tasks went to the harness cache, not ~/.cache/huggingface; nothing to /tmp
    assert any((cache / "hf-datasets").rglob("*.arrow")) and list(home.iterdir()) == list(tmp.iterdir()) == []
    assert not list((out / "cells").glob("*.scratch"))
    # the accuracies (with their stderr) reach the console's summary and report.md
    wide = dict(family_tables(df))["lm-eval"]
    assert {"acc", "acc norm", "bits/byte", "word ppl"} <= set(wide.columns)
    acc = cloze.loc["lmeval_acc"]
    assert f"{acc['value']:.1%} ± {acc['stderr']:.1%}" in wide["acc"].tolist()
    md, _ = write_report(out)
    assert f"{acc['value']:.1%} ± {acc['stderr']:.1%}" in md.read_text()


def test_a_killed_lm_eval_cell_leaves_no_temp_folder(tmp_path, corpora_dir, monkeypatch):
    """The local tasks are written into the cell's scratch folder in the run, which goes when the cell ends,
    killed or not (they were left in /tmp as harness-lmeval-*)."""
    path = lmeval_suite(tmp_path, tasks=[CLOZE], models=["w3"])
    _, tmp, _ = isolate_home_and_temp(tmp_path, monkeypatch)
    out = tmp_path / "out"
    killed = []

    def kill_the_cell_once_its_tasks_are_written():
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            if any((out / "cells").glob("*.scratch/harness-lmeval-*/*.yaml")):
                for child in psutil.Process().children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "harness.run.worker" in child.cmdline():
                            child.kill()
                            killed.append(child.pid)
            time.sleep(0.02)

    killer = threading.Thread(target=kill_the_cell_once_its_tasks_are_written)
    killer.start()
    try:
        assert main(["run", str(path), "--out", str(out), "--corpora", str(corpora_dir)]) == 3
    finally:
        killed.append("stop")
        killer.join()
    (record,) = [json.loads(p.read_text()) for p in (out / "cells").glob("*.json")]
    assert "killed by SIGKILL" in record["reason"]
    assert not list((out / "cells").glob("*.scratch")) and list(tmp.iterdir()) == []


def test_lmeval_tasks_command_writes_tasks_lm_eval_reads(tmp_path, corpora_dir):
    from lm_eval.tasks import TaskManager

    out = tmp_path / "tasks"
    assert main(["lmeval-tasks", "corpora:janeausten/persuasion.txt", str(out), "--docs", "5",
                 "--corpora", str(corpora_dir)]) == 0
    manager = TaskManager(include_path=str(out))
    loaded = manager.load([CLOZE, ROLLING])["tasks"]
    assert {t.OUTPUT_TYPE for t in loaded.values()} == {"multiple_choice", "loglikelihood_rolling"}
    assert main(["lmeval-tasks", "corpora:nope.txt", str(out), "--corpora", str(corpora_dir)]) == 2


def test_model_args_name_a_backend_its_settings_and_a_model():
    from harness.core.errors import UserError
    from harness.lmeval.model_args import split_model_args

    settings, spec = split_model_args({"backend": "llamacpp", "gguf": "pkg:x/y.gguf", "n_threads": 2, "device": "cpu"})
    assert (settings.type, settings.n_threads, spec.gguf) == ("llamacpp", 2, "pkg:x/y.gguf")
    settings, _ = split_model_args({"backend": "hf", "hf": "some/dir", "device": "cuda:0"})
    assert settings.device == "cuda"
    with pytest.raises(UserError, match="backend: expected one of"):
        split_model_args({"backend": "llamacp", "gguf": "x"})
    with pytest.raises(UserError, match="n_thread"):
        split_model_args({"backend": "llamacpp", "gguf": "x", "n_thread": 2})


# --- compare ----------------------------------------------------------------------------------------------------

def test_accuracy_moves_only_when_a_z_test_on_its_stderr_says_so():
    from scipy.stats import norm

    from harness.analysis.compare import judge
    from harness.analysis.gates import ALPHA, Gates
    from harness.core.stats import z_test_p

    assert z_test_p(0.40, 0.03, 0.30, 0.04) == pytest.approx(2 * norm.sf(0.10 / 0.05))
    assert z_test_p(0.5, 0.0, 0.5, 0.0) == 1.0
    policy = Gates({}, {}, {}).policy("lmeval_acc")

    def verdict(base, new):
        row = {"value": base[0], "stderr": base[1]}
        return judge(policy, True, pd.Series(row), pd.Series({"value": new[0], "stderr": new[1]}),
                     np.array([]), np.array([]), ALPHA)

    assert verdict((0.40, 0.022), (0.38, 0.022))["verdict"] == "unchanged"  # p = 0.52: noise
    worse = verdict((0.40, 0.022), (0.28, 0.020))
    assert worse["verdict"] == "regressed" and worse["p_value"] < ALPHA and "z-test" in worse["test"]
    assert verdict((0.28, 0.020), (0.40, 0.022))["verdict"] == "improved"
    assert verdict((0.40, None), (0.30, None))["verdict"] == "changed"  # no stderr: shown, never gating
    assert Gates({}, {}, {}).policy("lmeval_word_perplexity").kind == "exact"


def test_the_quantization_table_shows_accuracy_beside_kld(tmp_path):
    from runs import backend, perplexity_cell, write_run

    from harness.core.metrics import Measurement
    from harness.report import render as report
    from harness.report import views
    from harness.results import store

    rng = np.random.default_rng(4)
    records = []
    for name, kld, acc in (("q4", 0.05, 0.41), ("q8", 0.01, 0.47)):
        rec = perplexity_cell(rng, backend(name))
        rec["measurements"].append(Measurement("kld_mean", kld).row())
        records.append(rec)
        cell = perplexity_cell(rng, backend(name))
        cell["cell"]["task"] = f"acc.{CLOZE}"
        cell["cell_id"] = cell["cell_id"][:12] + name.rjust(4, "0")
        cell["measurements"] = [Measurement("lmeval_acc", acc, 200, stderr=0.035).row()]
        records.append(cell)
    sections = {s.title: s for s in report.build(store.read_run(write_run(tmp_path / "run", records)))}
    table = next(b for b in sections["Quantization: quality against size and speed"].blocks
                 if not isinstance(b, views.Plot) and hasattr(b, "columns"))
    columns = table.columns.tolist()
    accuracy = f"lmeval_acc (acc.{CLOZE})"
    assert columns.index(accuracy) == columns.index("same_top1") + 1  # beside the quality columns
    assert table[accuracy].tolist() == ["0.41", "0.47"] and table["kld_mean"].tolist()[1] == "0.01"
    assert f"± (lmeval_acc acc.{CLOZE})" in columns


@pytest.mark.integration
@pytest.mark.gguf
def test_harness_lm_eval_runs_lm_evals_command_line_on_a_suite_backend(tmp_path, corpora_dir, smollm2_path, capsys):
    include = write_local_tasks(tmp_path / "tasks", (corpora_dir / "janeausten" / "persuasion.txt").read_text(), n=3)
    out = tmp_path / "out"
    assert main(["lm-eval", "run", "--model", "harness", "--tasks", CLOZE, "--include_path", str(include),
                 "--limit", "3", "--output_path", str(out), "--model_args",
                 f"backend=llamacpp,gguf={smollm2_path},n_threads=2,max_length=256"]) == 0
    assert "harness_cloze" in capsys.readouterr().out
    (written,) = out.rglob("results_*.json")
    result = json.loads(written.read_text())["results"][CLOZE]
    assert 0 <= result["acc,none"] <= 1 and result["alias"] == CLOZE


def test_harness_lm_eval_without_the_local_tasks_folder_says_so_in_one_line(capsys):
    assert main(["lm-eval", "run", "--model", "harness", "--tasks", CLOZE, "--model_args",
                 "backend=llamacpp,gguf=x.gguf"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"harness: error: lm-eval: Tasks not found: {CLOZE} (a task of your own needs its folder: --include_path; "
        f"harness lmeval-tasks writes {CLOZE} and {ROLLING})")


@pytest.mark.integration
def test_harness_lm_eval_on_a_hub_task_offline_says_so_in_one_line(tmp_path, smollm2_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HOME": str(tmp_path),
           "HF_HOME": str(tmp_path / "hf"), "HARNESS_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "harness", "lm-eval", "run", "--model", "harness", "--tasks",
                           "hellaswag", "--limit", "2", "--model_args",
                           f"backend=llamacpp,gguf={smollm2_path},n_threads=2"], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("harness: error: lm-eval: Couldn't reach") and "downloaded once, online" in last


def test_the_config_hash_does_not_move_with_the_local_tasks_scratch_folder():
    from harness.tasks.lmeval import config_hash

    config = {"task": CLOZE, "dataset_kwargs": {"data_files": {"test": "/tmp/harness-lmeval-abc/harness_cloze.jsonl"}}}
    moved = {**config, "dataset_kwargs": {"data_files": {"test": "/tmp/harness-lmeval-xyz/harness_cloze.jsonl"}}}
    assert config_hash(config, "/tmp/harness-lmeval-abc") == config_hash(moved, "/tmp/harness-lmeval-xyz")
    assert config_hash(config, "/tmp/harness-lmeval-abc") != config_hash({**config, "num_fewshot": 1},
                                                                          "/tmp/harness-lmeval-abc")
