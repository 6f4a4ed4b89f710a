"""The run loop: plan the run, hand cells to a launcher, land each record as it arrives.

Landing a record means writing it (and the cell's artifacts) into the run directory and rebuilding the
result tables, so a run killed at any moment leaves every finished cell's result and ``--resume``
recomputes only what is missing. Where and how a cell runs is the launcher's business
(:mod:`harness.run.launcher`); the local one runs one cell at a time, because concurrent cells would
share cores and memory and spoil each other's speed figures.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.backends import BACKENDS
from harness.core.cpus import available_cpus
from harness.core.files import atomic_write_text
from harness.results import store
from harness.results.environment import environment
from harness.results.probe import probe, probe_line
from harness.results.records import (
    FAILED,
    OK,
    SKIPPED,
    TIMEOUT,
    artifact_path,
    cell_record_path,
    read_cell_records,
    read_record,
    write_cell_record,
)
from harness.run import rounds
from harness.run.job import Job, now
from harness.run.launcher import Finished, Launcher, ProcessLauncher, record_without_worker
from harness.run.plan import Plan, RunOptions, prepare
from harness.run.rundir import RunDirLock, take_over
from harness.sources.corpora import corpora_dir
from harness.suite.cells import Cell, expand
from harness.suite.schema import Suite
from harness.tasks import TASKS


@dataclass
class RunSummary:
    run_dir: Path
    ran: int = 0
    reused: int = 0
    failed: int = 0
    skipped: int = 0

    def count(self, status: str) -> None:
        """One more cell that ran, by how it ended."""
        self.ran += 1
        self.failed += status in (FAILED, TIMEOUT)
        self.skipped += status == SKIPPED


class Runner:
    def __init__(self, suite: Suite, cells: list[Cell], options: RunOptions, console: Console):
        self.suite, self.cells, self.options, self.console = suite, cells, options, console
        self.base_dir = options.suite_path.resolve().parent
        self.corpora = corpora_dir(options.corpora)
        self.timeout_s = options.timeout_s or suite.timeout_s
        self.executor = options.executor or suite.executor

    def run(self) -> RunSummary:
        plan = prepare(self.suite, self.cells, self.options, self.corpora)
        with RunDirLock(plan.run_dir):
            return self._run(plan)

    def _run(self, plan: Plan) -> RunSummary:
        run_dir = plan.run_dir
        launcher = self._launcher(run_dir, plan)  # a cluster that cannot run a cell is bad input: before any run
        self.info = {**self._run_info(plan, take_over(run_dir, self.suite.name)), "executor": launcher.describe()}
        self.probes = self._probe()
        if self.probes is not None:
            self.info["environment"]["probe"] = self.probes
        store.write_run_json(run_dir, self.info)
        self.plan, self.summary = plan, RunSummary(run_dir)
        done = {r.cell_id for r in read_cell_records(run_dir) if r.ok} if self.options.resume else set()
        plain = [c for c in self.cells if not rounds.interleaved(c)]
        mixed = [c for c in self.cells if rounds.interleaved(c)]
        todo = [c for c in mixed if c.cell_id not in done]
        self.summary.reused += len(mixed) - len(todo)
        phases = rounds.phases(plain, todo)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # refreshed twice a second: the cell being timed shares the machine with this process
        with Progress(*columns, console=self.console, transient=False, refresh_per_second=2) as progress:
            self.progress = progress
            self.bar = progress.add_task("cells", total=sum(map(len, phases)))
            try:
                for phase in phases:
                    self._run_phase(phase, launcher, done)
            except BaseException:  # Ctrl-C, SIGTERM, a full disk: take every cell's process down with us
                launcher.cancel_all()
                raise
            finally:
                launcher.close()
        for cell in todo:
            record = rounds.merge(cell, [read_record(cell_record_path(run_dir, cell.cell_id, r))
                                         for r in range(rounds.rounds_of(cell))])
            write_cell_record(run_dir, record)
            self.summary.count(record.status)
        store.write_tables(run_dir, run_dir.name, self.info["cells"])
        self.info["ended_at"] = now()
        store.write_run_json(run_dir, self.info)
        return self.summary

    def _launcher(self, run_dir: Path, plan: Plan) -> Launcher:
        if self.executor.type == "ray":
            from harness.run.ray_launcher import RayLauncher

            return RayLauncher(run_dir, self.timeout_s, self.executor, self.suite, self.options.suite_path, self.cells,
                               plan, self.corpora, self.console)
        return ProcessLauncher(run_dir, self.timeout_s)

    def _run_info(self, plan: Plan, previous: dict) -> dict:
        return {**previous, "run_id": plan.run_dir.name, "suite": self.suite.name,
                "suite_file": str(self.options.suite_path), "overrides": self.options.overrides,
                "environment": environment(), "started_at": previous.get("started_at", now()), "ended_at": None,
                "models": {k: v.fingerprint() for k, v in plan.models.items()}, "datasets": plan.datasets,
                "cells": [c.cell_id for c in expand(self.suite)], "timeout_s": self.timeout_s,
                "gates": {k: v.model_dump(exclude_none=True) for k, v in self.suite.gates.items()}}

    def _probe(self) -> dict[str, dict] | None:
        """The machine's ceilings for each CPU thread count the throughput cells use (cached a day), or None
        where the suite switched the probe off or no cell needs it. Its time is not a cell's."""
        threads = {BACKENDS[c.backend_spec.type].cpu_threads(c.backend_spec) or available_cpus() for c in self.cells
                   if TASKS[c.task_spec.type].timing and BACKENDS[c.backend_spec.type].roofline}
        if not self.suite.probe or not threads:
            return None
        probes = {}
        for n in sorted(threads):
            with self.console.status(f"probing the machine's memory bandwidth and GEMM rate ({n} threads)"):
                probes[str(n)] = probe(n)
            how = "cached" if probes[str(n)]["cached"] else f"{probes[str(n)]['probe_s']:.0f} s"
            self.console.print(f"machine probe, {n} threads ({how}): {probe_line(probes[str(n)])}", highlight=False)
        return probes

    def _run_phase(self, phase: list[rounds.Item], launcher: Launcher, done: set[str]) -> None:
        """Run a phase's items, as many at once as the launcher takes, landing each as it ends."""
        queue = deque(phase)
        while queue or launcher.running:
            while queue and len(launcher.running) < launcher.capacity:
                cell, round_ = queue.popleft()
                if self._finished_before(cell, round_, done):
                    self.summary.reused += round_ is None
                    self.progress.advance(self.bar)
                    continue
                skipped = self._capability_skip(cell, round_)
                if skipped is not None:
                    self._land(Finished(skipped.job, skipped.record))
                    continue
                launcher.submit(self._job(cell, round_))
            self.progress.update(self.bar, description=launcher.status_line())
            if launcher.running:
                for finished in launcher.wait_any():
                    self._land(finished)

    def _finished_before(self, cell: Cell, round_: int | None, done: set[str]) -> bool:
        if not self.options.resume:
            return False
        if round_ is None:
            return cell.cell_id in done
        path = cell_record_path(self.plan.run_dir, cell.cell_id, round_)
        return path.exists() and read_record(path).ok

    def _job(self, cell: Cell, round_: int | None) -> Job:
        models = self.plan.models
        stem = cell.cell_id if round_ is None else f"{cell.cell_id}.round{round_}"
        cells_dir = self.plan.run_dir / "cells"
        return Job(cell=cell, round=round_, base_dir=self.base_dir, corpora=self.corpora, model=models[cell.model],
                   reference_model=models[cell.reference.model] if cell.reference else None,
                   outcome_path=cells_dir / f"{stem}.outcome.json", artifacts_dir=cells_dir / f"{stem}.artifacts",
                   started_at=now(), probes=self.probes)

    def _capability_skip(self, cell: Cell, round_: int | None) -> Finished | None:
        """A skipped record, without starting a process, for a backend that lacks what the task needs."""
        can, why = BACKENDS[cell.backend_spec.type].capabilities_for(cell.model_spec.model_dump(mode="json"))
        missing = TASKS[cell.task_spec.type].requirements(cell.task_spec) - can
        if not missing:
            return None
        reason = f"backend lacks capability {', '.join(sorted(missing))}" + (f" ({why})" if why else "")
        job = self._job(cell, round_)
        return Finished(job, record_without_worker(job, reason, SKIPPED))

    def _land(self, finished: Finished) -> None:
        """Write a finished job's artifacts and record; refresh the tables when a whole cell ended."""
        job, record, run_dir = finished.job, finished.record, self.plan.run_dir
        for name, text in finished.artifacts.items():
            atomic_write_text(artifact_path(run_dir, job.cell_id, name), text)
        write_cell_record(run_dir, record)
        if job.round is None:
            self.summary.count(record.status)
            store.write_tables(run_dir, run_dir.name, self.info["cells"])
        if record.status != OK:
            log = f" (log: {finished.log_path})" if finished.log_path else ""
            self.console.print(f"[red]{job.cell.label}: {record.status}: {record.reason}[/red]{log}")
        self.progress.advance(self.bar)
