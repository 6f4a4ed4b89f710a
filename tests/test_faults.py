"""Reliability under faults: two runs on one run directory, signals, damaged records, environment errors
(a full disk, a read-only folder), durable files that follow the umask, and the exit codes of each.

Runs use the n-gram backend on the built-in corpus (seconds each); the cells' processes are real, and so
are the signals, the tmpfs that fills up and the file size limit."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from conftest import REPO

from harness.cli import main
from suites import write_suite

TABLES = ("results.parquet", "results.csv", "samples.parquet")


def ngram_suite(tmp_path: Path, name: str = "faults", orders=(2, 3), **extra) -> Path:
    """Word n-grams of the given orders scored on the built-in corpus: one cell per order."""
    suite = {"name": name, "backends": {"ngram": {"type": "ngram"}},
             "models": {f"w{n}": {"ngram": {"order": n, "train": "builtin:stdlib-docs#train"}} for n in orders},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 128}},
             "matrix": [{"model": [f"w{n}" for n in orders], "backend": "ngram", "task": "ppl"}], **extra}
    return write_suite(tmp_path, suite)


def error_lines(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def one_error(capsys) -> str:
    lines = error_lines(capsys)
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
    suite, out = ngram_suite(tmp_path), tmp_path / "run"
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
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert len(logs) == 2 and all(p.stat().st_size == 0 for p in (out / "logs").iterdir())  # each cell ran once
    assert len(pd.read_parquet(out / "results.parquet").cell_id.unique()) == 2


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_sigterm_and_sighup_stop_the_run_like_ctrl_c(signum, tmp_path):
    suite, out = ngram_suite(tmp_path), tmp_path / "run"
    runner = start_run(suite, out)
    worker = stopped_worker(runner)
    runner.send_signal(signum)
    assert runner.wait(timeout=120) == 130
    assert runner.stderr.read().strip().splitlines()[-1] == (
        f"harness: interrupted by {signum.name}; finished cells are kept (resume with --resume)")
    assert gone(worker), "the cell's process outlived the run"
    assert not records_written(out)
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0


@pytest.mark.parametrize("when", ["starting", "measuring"])
def test_a_killed_harness_takes_its_cell_with_it_and_leaves_no_lock(when, tmp_path, capsys):
    """SIGKILL cannot be handled: the kernel kills the cell (PR_SET_PDEATHSIG, armed before the worker's
    imports; a worker stopped before it armed it sees its parent is gone when it resumes) and drops the lock."""
    suite, out = ngram_suite(tmp_path), tmp_path / "run"
    runner = start_run(suite, out)
    worker = stopped_worker(runner, loaded="numpy" if when == "measuring" else None)
    runner.kill()
    runner.wait(timeout=60)
    if when == "starting":
        worker.resume()
    assert gone(worker), "the cell's process outlived a killed harness"
    assert not records_written(out)
    assert main(["run", str(suite), "--out", str(out), "--resume"]) == 0
    assert "(2 cells ran, 0 reused, 0 failed, 0 skipped)" in capsys.readouterr().out


def test_a_child_whose_parent_is_already_gone_exits_at_once():
    """The parent may die before PR_SET_PDEATHSIG is set; the child checks who its parent is right after."""
    code = "from harness.core.process import die_with_parent; die_with_parent({pid}); print('alive')"
    orphan = subprocess.run([sys.executable, "-c", code.format(pid=1 if os.getpid() != 1 else 2)],
                            capture_output=True, text=True, cwd=REPO)
    assert (orphan.returncode, orphan.stdout) == (1, "")
    child = subprocess.run([sys.executable, "-c", code.format(pid=os.getpid())], capture_output=True, text=True,
                           cwd=REPO)
    assert (child.returncode, child.stdout) == (0, "alive\n")
