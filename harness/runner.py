"""Runs a suite's cells, each in its own subprocess with a timeout; keeps every finished cell's result.

The runner prepares everything that can be checked up front (model files, corpora, the output
directory) so bad input fails before any cell runs, then runs cells one at a time: one at a time
because concurrent cells would share cores and memory and spoil each other's speed figures.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness import results, rounds
from harness.atomic import atomic_write_text
from harness.backends import BACKENDS
from harness.data import Corpus, DatasetSpec, corpora_dir, load_corpus
from harness.errors import UserError, ensure_available, located
from harness.models import ResolvedModel, check_gguf, locate, resolve, resolve_ngram
from harness.suite import Cell, Suite, expand
from harness.tasks import TASKS


@dataclass
class RunOptions:
    suite_path: Path
    out: Path | None = None
    only: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    corpora: Path | None = None
    timeout_s: float | None = None
    results_root: Path = Path("results")


@dataclass
class RunSummary:
    run_dir: Path
    ran: int
    reused: int
    failed: int
    skipped: int

    def count(self, status: str) -> None:
        """One more cell that ran, by how it ended."""
        self.ran += 1
        self.failed += status in (results.FAILED, results.TIMEOUT)
        self.skipped += status == results.SKIPPED


def select_cells(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """Cells whose ``model/backend/task`` label or id matches any glob (all cells without patterns)."""
    if not patterns:
        return cells
    return [c for c in cells if any(fnmatch.fnmatchcase(c.label, p) or c.cell_id.startswith(p)
                                    for p in patterns)]


def check_inputs(suite: Suite, cells: list[Cell], suite_path: Path,
                 corpora: Path | None) -> tuple[dict[str, Corpus], dict[str, dict]]:
    """Everything `validate` can check without the network: backend packages are installed, model files
    and corpora exist and are sane. Returns the datasets it read and the fingerprints of the n-gram
    training texts by source (each read once, however many models count it)."""
    base_dir = suite_path.resolve().parent
    for name in sorted({c.backend for c in cells}):
        backend_cls = BACKENDS[suite.backends[name].type]
        with located(suite_path, f"backends.{name}.type"):
            for module, extra in backend_cls.dependencies_for(suite.backends[name].model_dump()):
                ensure_available(module, extra, f"backend {backend_cls.type_name}")
    train_texts: dict[str, dict] = {}
    for name in sorted(_models_needed(suite, cells)):
        spec = suite.models[name]
        with located(suite_path, f"models.{name}.{spec.kind}"):
            path = locate(spec, base_dir, fetch=False)
            if path is not None and spec.kind == "gguf":
                check_gguf(path)
        if spec.kind == "ngram":
            for i, source in enumerate(spec.ngram.sources):
                key = "train" if isinstance(spec.ngram.train, str) else f"train[{i}]"
                if source not in train_texts:
                    with located(suite_path, f"models.{name}.ngram.{key}"):
                        corpus = load_corpus(source, DatasetSpec(source=source), base_dir, corpora)
                    train_texts[source] = corpus.fingerprint()
    loaded = {}
    for name in sorted({c.dataset for c in cells if c.dataset}):
        spec = suite.datasets[name]
        if not spec.source.startswith("hf:"):
            with located(suite_path, f"datasets.{name}.source"):
                loaded[name] = load_corpus(name, spec, base_dir, corpora)
    return loaded, train_texts


def _models_needed(suite: Suite, cells: list[Cell]) -> set[str]:
    """The cells' models plus the models whose tokenizers their n-gram models count in."""
    names = {c.model for c in cells} | {c.reference["model"] for c in cells if c.reference}
    return names | {suite.models[n].ngram.tokenizer for n in names
                    if suite.models[n].kind == "ngram" and suite.models[n].ngram.tokenizer}


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def choose_run_dir(suite: Suite, options: RunOptions) -> Path:
    if options.out is not None:
        return options.out
    suite_root = options.results_root / suite.name
    if options.resume and suite_root.is_dir():
        previous = sorted(p for p in suite_root.iterdir() if (p / "run.json").exists())
        if previous:
            return previous[-1]
    run_dir = suite_root / new_run_id()
    while run_dir.exists():
        time.sleep(1)
        run_dir = suite_root / new_run_id()
    return run_dir


def ensure_writable(run_dir: Path) -> None:
    try:
        (run_dir / "cells").mkdir(parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"output directory {run_dir} is not writable ({exc.strerror})") from None


class Runner:
    def __init__(self, suite: Suite, cells: list[Cell], options: RunOptions, console: Console):
        self.suite, self.cells, self.options, self.console = suite, cells, options, console
        self.base_dir = options.suite_path.resolve().parent
        self.corpora = corpora_dir(options.corpora)
        self.timeout_s = options.timeout_s or suite.timeout_s

    def prepare(self) -> tuple[Path, dict[str, ResolvedModel], dict]:
        """Resolve models and corpora and create the run directory; raises UserError on bad input."""
        path = self.options.suite_path
        local, train_texts = check_inputs(self.suite, self.cells, path, self.corpora)
        models, corpora = {}, {}
        needed = _models_needed(self.suite, self.cells)
        for name in sorted(n for n in needed if self.suite.models[n].kind != "ngram"):
            with located(path, f"models.{name}"):
                models[name] = resolve(name, self.suite.models[name], self.base_dir)
        for name in sorted(n for n in needed if self.suite.models[n].kind == "ngram"):
            spec = self.suite.models[name]
            with located(path, f"models.{name}.ngram"):
                models[name] = resolve_ngram(name, spec, [train_texts[s] for s in spec.ngram.sources],
                                             self.base_dir, self.corpora, models.get(spec.ngram.tokenizer))
        for name in sorted({c.dataset for c in self.cells if c.dataset}):
            with located(path, f"datasets.{name}.source"):
                corpus = local.get(name) or load_corpus(name, self.suite.datasets[name], self.base_dir,
                                                        self.corpora)
            corpora[name] = corpus.fingerprint()
        run_dir = choose_run_dir(self.suite, self.options)
        ensure_writable(run_dir)
        return run_dir, models, corpora

    def run(self) -> RunSummary:
        run_dir, models, corpora = self.prepare()
        run_id = run_dir.name
        previous = {}
        if (run_dir / "run.json").exists():
            previous = json.loads((run_dir / "run.json").read_text())
        info = {**previous, "run_id": run_id, "suite": self.suite.name,
                "suite_file": str(self.options.suite_path),
                "overrides": self.options.overrides, "environment": results.environment(),
                "started_at": previous.get("started_at", _now()), "ended_at": None,
                "models": {k: v.fingerprint() for k, v in models.items()}, "datasets": corpora,
                "cells": [c.cell_id for c in expand(self.suite)], "timeout_s": self.timeout_s,
                "gates": {k: v.model_dump(exclude_none=True) for k, v in self.suite.gates.items()}}
        results.write_run_json(run_dir, info)

        done = {r["cell_id"] for r in results.read_cell_records(run_dir) if r["status"] == results.OK}
        plain = [c for c in self.cells if not rounds.interleaved(c)]
        mixed = [c for c in self.cells if rounds.interleaved(c) and not (self.options.resume and c.cell_id in done)]
        schedule = rounds.schedule(plain, mixed)
        summary = RunSummary(run_dir, 0, 0, 0, 0)
        summary.reused += len([c for c in self.cells if rounds.interleaved(c)]) - len(mixed)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        # refreshed twice a second: the cell being timed shares the machine with this process
        with Progress(*columns, console=self.console, transient=False, refresh_per_second=2) as progress:
            bar = progress.add_task("cells", total=len(schedule))
            for cell, round_ in schedule:
                progress.update(bar, description=cell.label + (f" (round {round_ + 1})" if round_ is not None else ""))
                if round_ is None and self.options.resume and cell.cell_id in done:
                    summary.reused += 1
                elif round_ is not None and self.options.resume and self._round_done(run_dir, cell, round_):
                    pass
                else:
                    record = self._run_cell(cell, run_dir, models, round_)
                    if round_ is None:
                        summary.count(record["status"])
                        results.write_tables(run_dir, run_id, info["cells"])
                progress.advance(bar)
        for cell in mixed:
            record = rounds.merge(cell, [json.loads(results.cell_record_path(run_dir, cell.cell_id, r).read_text())
                                         for r in range(rounds.rounds_of(cell))])
            results.write_cell_record(run_dir, record)
            summary.count(record["status"])
        results.write_tables(run_dir, run_id, info["cells"])
        info["ended_at"] = _now()
        results.write_run_json(run_dir, info)
        return summary

    @staticmethod
    def _round_done(run_dir: Path, cell: Cell, round_: int) -> bool:
        path = results.cell_record_path(run_dir, cell.cell_id, round_)
        return path.exists() and json.loads(path.read_text())["status"] == results.OK

    def _run_cell(self, cell: Cell, run_dir: Path, models: dict[str, ResolvedModel], round_: int | None = None
                  ) -> dict:
        base = {"cell_id": cell.cell_id, "cell": cell.model_dump(mode="json"), "params": cell.params,
                "started_at": _now()}
        if round_ is not None:
            base.update(round=round_, cell=rounds.round_cell(cell))
        can, why = BACKENDS[cell.backend_spec["type"]].capabilities_for(cell.model_spec)
        missing = TASKS[cell.task_spec["type"]].requires - can
        if missing:
            record = {**base, "status": results.SKIPPED, "measurements": [],
                      "reason": f"backend lacks capability {', '.join(sorted(missing))}"
                                + (f" ({why})" if why else "")}
            results.write_cell_record(run_dir, record)
            return record
        job = {**base, "run_dir": str(run_dir), "base_dir": str(self.base_dir),
               "corpora": str(self.corpora) if self.corpora else None, "model": _job_model(models[cell.model])}
        if cell.reference:
            job["reference_model"] = _job_model(models[cell.reference["model"]])
        record_path = results.cell_record_path(run_dir, cell.cell_id, round_)
        job_path = record_path.with_suffix(".job.json")
        atomic_write_text(job_path, json.dumps(job, indent=1))
        record_path.unlink(missing_ok=True)
        log_path = run_dir / "logs" / (record_path.stem + ".log")
        started = time.time()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "harness.worker", str(job_path)], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            try:
                returncode = proc.wait(timeout=self.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                returncode, timed_out = proc.returncode, True
            except BaseException:  # Ctrl-C: take the cell's process group down with us
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        job_path.unlink(missing_ok=True)
        if record_path.exists():
            record = json.loads(record_path.read_text())
        else:
            if timed_out:
                status, reason = results.TIMEOUT, f"timed out after {self.timeout_s:g} s"
            elif returncode < 0:
                status, reason = results.FAILED, f"crashed: killed by {signal.Signals(-returncode).name}"
            else:
                status, reason = results.FAILED, f"crashed: exit code {returncode}"
            tail = "" if timed_out else _last_line(log_path)
            record = {**base, "status": status, "measurements": [],
                      "reason": reason + (f"; last output: {tail}" if tail else ""),
                      "ended_at": _now(), "duration_s": time.time() - started}
            results.write_cell_record(run_dir, record)
        if record["status"] != results.OK:
            self.console.print(f"[red]{cell.label}: {record['status']}: {record['reason']}[/red] "
                               f"(log: {log_path})")
        return record


def _job_model(model: ResolvedModel) -> dict:
    return {**model.__dict__, "path": str(model.path)}


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
