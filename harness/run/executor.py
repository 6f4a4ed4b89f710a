"""Executors: where and how a cell's job runs. The runner submits jobs and waits for whichever finishes
first (cells may finish out of order, several at once); an executor turns every way a job can end (a
record, a crash, a timeout) into a :class:`Finished` with a record, so the runner never deals with
processes. :class:`ProcessExecutor` runs one worker process at a time on this machine;
:class:`harness.run.ray_executor.RayExecutor` runs jobs as Ray tasks on a cluster."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.files import Damaged, check_output
from harness.core.memory import oom_kills, out_of_memory_reason
from harness.core.process import child_command, starting_child
from harness.core.terminal import console_text
from harness.results.records import FAILED, TIMEOUT, CellRecord, read_record
from harness.run.job import Job, now
from harness.suite.cells import Cell

#: a worker's exit code when it could not write its record even without samples (see harness.run.worker)
WORKER_COULD_NOT_WRITE = 4


@dataclass
class Finished:
    """A job that ended, however it ended."""

    job: Job
    record: CellRecord
    #: files the task kept beside the numbers: name -> text
    artifacts: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None


class Executor(ABC):
    #: jobs the runner may keep submitted at once
    capacity: int = 1

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Start (or queue) ``job``; returns at once."""

    @abstractmethod
    def wait_any(self) -> list[Finished]:
        """Block until at least one submitted job has ended, or :meth:`status_line` changed (a job started on a
        cluster node); every job that has ended by then, possibly none."""

    @abstractmethod
    def cancel_all(self) -> None:
        """Stop everything submitted (Ctrl-C): no job's process may outlive the run."""

    @property
    @abstractmethod
    def running(self) -> list[Job]:
        """Jobs submitted and not yet returned by :meth:`wait_any`."""

    def status_line(self) -> str:
        """What the progress bar shows: the jobs running now."""
        return ", ".join(job_label(j) for j in self.running)

    def describe(self) -> dict:
        """The executor, for ``run.json``."""
        return {"type": "local"}

    def close(self) -> None:  # noqa: B027 (most executors hold nothing)
        """Release what the executor holds once the run's jobs are done (a cluster it started)."""


def job_label(job: Job) -> str:
    """A job as the console shows it (names escaped: they come from a suite)."""
    return console_text(job.cell.label) + (f" (round {job.round + 1})" if job.round is not None else "")


def record_without_worker(job: Job, reason: str, status: str = FAILED, duration_s: float | None = None) -> CellRecord:
    """The record of a job whose worker left none."""
    return record_without_job(job.cell, reason, status, job.started_at, duration_s, job.round)


def record_without_job(cell: Cell, reason: str, status: str, started_at: str, duration_s: float | None = None,
                       round_: int | None = None) -> CellRecord:
    """The record of a cell (or round) that ran no worker: skipped, or its worker left no record."""
    return CellRecord(cell_id=cell.cell_id, cell=cell.model_dump(mode="json"), params=cell.params, status=status,
                      reason=reason, started_at=started_at, ended_at=now(), duration_s=duration_s, round=round_)


def read_outcome(job: Job) -> tuple[CellRecord, dict[str, str]] | None:
    """The record and artifacts a worker left in the job's outcome places, or None if it left none."""
    if not job.outcome_path.exists():
        return None
    try:
        record = read_record(job.outcome_path)
    except Damaged as exc:
        return record_without_worker(job, f"crashed: its record is damaged ({exc})"), {}
    artifacts = {}
    if job.artifacts_dir.is_dir():
        artifacts = {p.name: p.read_text(encoding="utf-8") for p in sorted(job.artifacts_dir.iterdir())}
    return record, artifacts


class ProcessExecutor(Executor):
    """One worker process at a time on this machine (``python -m harness.run.worker JOB``), in its own
    process group so that a timeout or Ctrl-C kills whatever it started, with a wall-clock limit."""

    capacity = 1

    def __init__(self, run_dir: Path, timeout_s: float):
        self.run_dir, self.timeout_s = run_dir, timeout_s
        self._job: Job | None = None
        self._proc: subprocess.Popen | None = None
        self._started = 0.0
        self._oom_kills: int | None = None

    @property
    def running(self) -> list[Job]:
        return [self._job] if self._job is not None else []

    def scratch(self, stem: str) -> Path:
        return self.run_dir / "cells" / f"{stem}.job.json"

    def submit(self, job: Job) -> None:
        if self._job is not None:
            raise RuntimeError("ProcessExecutor runs one job at a time")
        job_path = self.scratch(job.stem)
        job.write(job_path)
        log_path = self.log_path(job)
        check_output(log_path)  # opened, not replaced: a FIFO would block, a link write elsewhere
        check_output(job.artifacts_dir, folder=True)
        self._oom_kills = oom_kills()
        with starting_child(), open(log_path, "wb") as log:
            # the worker dies with this process; its session lets a timeout kill whatever it started
            self._proc = subprocess.Popen(child_command("harness.run.worker", str(job_path)), stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            self._job, self._started = job, time.time()

    def log_path(self, job: Job) -> Path:
        return self.run_dir / "logs" / f"{job.stem}.log"

    def wait_any(self) -> list[Finished]:
        job, proc = self._job, self._proc
        try:
            returncode, timed_out = proc.wait(timeout=self.timeout_s), False
        except subprocess.TimeoutExpired:
            self._kill()
            returncode, timed_out = proc.returncode, True
        duration = time.time() - self._started
        self._job = self._proc = None
        self.scratch(job.stem).unlink(missing_ok=True)
        outcome = read_outcome(job)
        log_path = self.log_path(job)
        if outcome is not None:
            record, artifacts = outcome
        else:
            oom = out_of_memory_reason(self._oom_kills) if returncode == -signal.SIGKILL and not timed_out else None
            reason, status = how_it_ended(returncode, timed_out, self.timeout_s, log_path, oom)
            record, artifacts = record_without_worker(job, reason, status, duration_s=duration), {}
        job.outcome_path.unlink(missing_ok=True)
        for folder in (job.artifacts_dir, job.scratch_dir):
            shutil.rmtree(folder, ignore_errors=True)
        return [Finished(job, record, artifacts, log_path)]

    def cancel_all(self) -> None:
        if self._proc is not None:
            self._kill()
            self.scratch(self._job.stem).unlink(missing_ok=True)
            shutil.rmtree(self._job.scratch_dir, ignore_errors=True)
            self._job = self._proc = None

    def _kill(self) -> None:
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self._proc.wait()


def how_it_ended(returncode: int, timed_out: bool, timeout_s: float, log_path: Path,
                 out_of_memory: str | None = None) -> tuple[str, str]:
    """(reason, status) of a worker that left no record; ``out_of_memory``: the reason when the kernel's OOM
    killer was known to have killed it (:func:`harness.core.memory.out_of_memory_reason`)."""
    if timed_out:
        return f"timed out after {timeout_s:g} s", TIMEOUT
    if out_of_memory:
        reason = out_of_memory
    elif returncode < 0:
        reason = f"crashed: killed by {signal.Signals(-returncode).name}"
    elif returncode == WORKER_COULD_NOT_WRITE:
        reason = "crashed: could not write its record (a full disk or an unwritable run directory)"
    else:
        reason = f"crashed: exit code {returncode}"
    tail = last_line(log_path)
    return reason + (f"; last output: {tail}" if tail else ""), FAILED


def last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""
