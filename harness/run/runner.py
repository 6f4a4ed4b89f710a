"""The run loop: plan the run, hand cells to an executor, land each record as it arrives.

Landing a record means writing it (and the cell's artifacts) into the run directory and rebuilding the
result tables, so a run killed at any moment leaves every finished cell's result and ``--resume``
recomputes only what is missing. Where and how a cell runs is the executor's business
(:mod:`harness.run.executor`); the local one runs one cell at a time, because concurrent cells would
share cores and memory and spoil each other's speed figures.
"""

from __future__ import annotations

from collections import deque
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.backends import BACKENDS
from harness.core import contention
from harness.core.cpus import available_cpus
from harness.core.errors import warn
from harness.core.files import atomic_write_text, check_output
from harness.core.terminal import console_text
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
from harness.run.executor import Executor, Finished, ProcessExecutor, record_without_job, record_without_worker
from harness.run.job import Job, now
from harness.run.plan import Plan, RunOptions, ensure_writable, prepare
from harness.run.resume import changed_inputs, described_inputs
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
        self.wait_quiet_s = suite.busy.wait_quiet_s if options.wait_quiet_s is None else options.wait_quiet_s

    def run(self) -> RunSummary:
        plan = prepare(self.suite, self.cells, self.options, self.corpora)
        # cells of a model this install cannot make (a quantization library missing) are skipped, those of a model
        # whose making failed fail, each with the reason
        self.unresolved = {c.cell_id: why for c in self.cells if (why := plan.unresolved(self.suite, c))}
        unresolved = [c for c in self.cells if c.cell_id in self.unresolved]
        self.cells = [c for c in self.cells if c.cell_id not in self.unresolved]
        # a cluster that cannot run a cell is bad input: refused before the run directory is made
        executor = self._executor(plan.run_dir, plan)
        try:
            ensure_writable(plan.run_dir)
            with RunDirLock(plan.run_dir):
                return self._run(plan, executor, unresolved)
        except Exception as exc:
            exc.run_dir = plan.run_dir  # where the command line puts the traceback of a harness bug
            raise
        finally:
            executor.close()

    def _run(self, plan: Plan, executor: Executor, unresolved: list[Cell]) -> RunSummary:
        run_dir = plan.run_dir
        previous = take_over(run_dir, self.suite.name, self.options.resume)
        self.info = {**self._run_info(plan, previous), "executor": executor.describe()}
        self.probes = self._probe()
        if self.probes is not None:
            self.info["environment"]["probe"] = self.probes
        store.write_run_json(run_dir, self.info)
        self.plan, self.summary = plan, RunSummary(run_dir)
        self.stale: set[str] = set()  # finished cells whose inputs changed since: they run again
        done = set()
        if self.options.resume:
            for change in changed_inputs(run_dir, self.cells, plan):
                warn(change.line())
                self.stale |= change.cells
            done = {r.cell_id for r in read_cell_records(run_dir) if r.ok} - self.stale
        for cell in unresolved:  # a cell an earlier run finished keeps its record
            if cell.cell_id in done:
                self.summary.reused += 1
            else:
                status, reason = self.unresolved[cell.cell_id]
                write_cell_record(run_dir, record_without_job(cell, reason, status, now()))
                self.summary.count(status)
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
                    self._run_phase(phase, executor, done)
            except BaseException:  # Ctrl-C, SIGTERM, a full disk: take every cell's process down with us
                executor.cancel_all()
                with suppress(OSError):  # a full disk may be why the run stops: that error is the one to tell
                    self._ended(run_dir)
                raise
            finally:
                executor.close()
        per_cell = {cell.cell_id: [read_record(cell_record_path(run_dir, cell.cell_id, r))
                                   for r in range(rounds.rounds_of(cell))] for cell in todo}
        medians = rounds.canary_medians([r for records in per_cell.values() for r in records])
        for cell in todo:
            record = rounds.merge(cell, per_cell[cell.cell_id], medians, self.suite.busy)
            write_cell_record(run_dir, record)
            self.summary.count(record.status)
        store.write_tables(run_dir, run_dir.name, self.info["cells"])
        self._ended(run_dir)
        return self.summary

    def _ended(self, run_dir: Path) -> None:
        """``run.json`` says when the run ended, however it ended."""
        self.info["ended_at"] = now()
        store.write_run_json(run_dir, self.info)

    def _executor(self, run_dir: Path, plan: Plan) -> Executor:
        if self.executor.type == "ray":
            from harness.run.ray_executor import RayExecutor

            return RayExecutor(run_dir, self.timeout_s, self.executor, self.suite, self.options.suite_path, self.cells,
                               plan, self.corpora, self.console)
        return ProcessExecutor(run_dir, self.timeout_s)

    def _run_info(self, plan: Plan, previous: dict) -> dict:
        return {**previous, "run_id": plan.run_dir.name, "suite": self.suite.name,
                "suite_file": str(self.options.suite_path), "overrides": self.options.overrides,
                "environment": environment(), "started_at": previous.get("started_at", now()), "ended_at": None,
                **described_inputs(previous, plan, self.suite),
                "cells": [c.cell_id for c in expand(self.suite)], "timeout_s": self.timeout_s,
                "gates": {k: v.model_dump(exclude_none=True) for k, v in self.suite.gates.items()},
                "busy": {**self.suite.busy.model_dump(), "wait_quiet_s": self.wait_quiet_s}}

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

    def _run_phase(self, phase: list[rounds.Item], executor: Executor, done: set[str]) -> None:
        """Run a phase's items, as many at once as the executor takes, landing each as it ends."""
        queue = deque(phase)
        while queue or executor.running:
            while queue and len(executor.running) < executor.capacity:
                cell, round_ = queue.popleft()
                if self._finished_before(cell, round_, done):
                    self.summary.reused += round_ is None
                    self.progress.advance(self.bar)
                    continue
                skipped = self._capability_skip(cell, round_)
                if skipped is not None:
                    self._land(Finished(skipped.job, skipped.record))
                    continue
                executor.submit(self._job(cell, round_, self._wait_for_quiet(cell, round_)))
            self.progress.update(self.bar, description=executor.status_line())
            if executor.running:
                for finished in executor.wait_any():
                    self._land(finished)

    def _finished_before(self, cell: Cell, round_: int | None, done: set[str]) -> bool:
        if not self.options.resume:
            return False
        if round_ is None:
            return cell.cell_id in done
        path = cell_record_path(self.plan.run_dir, cell.cell_id, round_)
        return cell.cell_id not in self.stale and path.exists() and read_record(path).ok

    def _wait_for_quiet(self, cell: Cell, round_: int | None) -> dict | None:
        """``--wait-quiet``: before a timing cell (or round) on this machine, wait until the machine has been
        quiet for a short window, up to the limit; what the wait found goes to the cell's verdict."""
        if not self.wait_quiet_s or not TASKS[cell.task_spec.type].timing or self.executor.type != "local":
            return None
        what = cell.label + ("" if round_ is None else f" round {round_}")
        said = []

        def say(message: str) -> None:
            if not said:
                self.console.print(f"{what}: {message}", highlight=False, soft_wrap=True)
            said.append(message)
            self.progress.update(self.bar, description=message)

        wait = contention.wait_until_quiet(self.wait_quiet_s, self.suite.busy, say)
        if said or not wait["quiet"]:
            outcome = ("quiet" if wait["quiet"] else f"still busy ({wait['reason']}), flagged busy")
            self.console.print(f"{what}: after {wait['waited_s']:.0f} s of waiting the machine is {outcome}",
                               highlight=False, soft_wrap=True)
        return wait

    def _job(self, cell: Cell, round_: int | None, wait: dict | None = None) -> Job:
        models = self.plan.models
        stem = cell.cell_id if round_ is None else f"{cell.cell_id}.round{round_}"
        cells_dir = self.plan.run_dir / "cells"
        return Job(cell=cell, round=round_, base_dir=self.base_dir, corpora=self.corpora, model=models[cell.model],
                   reference_model=models[cell.reference.model] if cell.reference else None,
                   outcome_path=cells_dir / f"{stem}.outcome.json", artifacts_dir=cells_dir / f"{stem}.artifacts",
                   started_at=now(), probes=self.probes, busy=self.suite.busy.model_dump(), wait=wait)

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
            path = artifact_path(run_dir, job.cell_id, name)
            check_output(path.parent, folder=True)  # not a link planted in a copied run folder
            atomic_write_text(path, text)
        write_cell_record(run_dir, record)
        if job.round is None:
            self.summary.count(record.status)
            store.write_tables(run_dir, run_dir.name, self.info["cells"])
        if record.status != OK:
            log = f" (log: {finished.log_path})" if finished.log_path else ""
            line = console_text(f"{job.cell.label}: {record.status}: {record.reason}")
            self.console.print(f"[red]{line}[/red]{console_text(log)}")
        self.progress.advance(self.bar)
        if not self.console.is_terminal:  # a log file (a nightly job): no bar is drawn, so a line per job
            task = self.progress.tasks[0]
            took = f" in {record.duration_s:.1f} s" if record.duration_s is not None else ""
            round_ = "" if job.round is None else f" round {job.round}"
            self.console.print(console_text(f"[{task.completed:.0f}/{task.total:.0f}] {job.cell.label}{round_}: "
                                            f"{record.status}{took}"), highlight=False, soft_wrap=True)
