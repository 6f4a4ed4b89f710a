"""What ``--resume`` may keep: a finished cell whose inputs are today's.

A resume finishes a run with today's inputs, so a cell whose model file, reference model or dataset
changed since it ran (another quant under the same name, an edited ``file:`` corpus) runs again rather
than mixing old and new inputs in one run, and ``run.json`` then describes every kept cell's inputs.
Only the inputs' fingerprints (sha256) count: timings, machine load and the like are measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.results.records import read_record, record_files
from harness.run.plan import Plan, models_needed
from harness.suite.cells import Cell, expand
from harness.suite.schema import Suite


@dataclass
class Change:
    """One input that differs from what some finished cells read."""

    what: str  # "dataset 'wiki' (file:wiki.txt)"
    before: str  # the sha256 the cells read
    now: str
    cells: set[str] = field(default_factory=set)

    def line(self) -> str:
        return (f"resume: {self.what} changed since its cells ran (sha256 {self.before[:12]}… now "
                f"{self.now[:12]}…): {len(self.cells)} cell(s) run again")


def todays_inputs(cell: Cell, plan: Plan) -> dict[str, tuple[str, str]]:
    """A cell's inputs as the record's ``fingerprints`` name them: role -> (what, sha256 today)."""
    model = plan.models[cell.model]
    inputs = {"model": (f"model '{cell.model}' ({model.source})", model.sha256)}
    if cell.reference:
        ref = plan.models[cell.reference.model]
        inputs["reference"] = (f"model '{cell.reference.model}' ({ref.source})", ref.sha256)
    if cell.dataset:
        data = plan.datasets[cell.dataset]
        inputs["dataset"] = (f"dataset '{cell.dataset}' ({data['source']})", data["sha256"])
    return inputs


def changed_inputs(run_dir: Path, cells: list[Cell], plan: Plan) -> list[Change]:
    """The inputs of ``cells`` that differ from those their records there (cells and rounds) were made
    from; an input a record does not name (written before it was recorded) is not compared."""
    by_id = {c.cell_id: c for c in cells}
    changes: dict[str, Change] = {}
    for path in record_files(run_dir):
        record = read_record(path)
        cell = by_id.get(record.cell_id)
        if cell is None or not record.fingerprints:
            continue
        for role, (what, now) in todays_inputs(cell, plan).items():
            then = record.fingerprints.get(role)
            before = then.get("sha256") if isinstance(then, dict) else None
            if isinstance(before, str) and before != now:
                changes.setdefault(what, Change(what, before, now)).cells.add(cell.cell_id)
    return list(changes.values())


def described_inputs(previous: dict, plan: Plan, suite: Suite) -> dict[str, dict]:
    """``run.json``'s ``models`` and ``datasets``: today's, plus the previous ``run.json``'s entries for the
    inputs of suite cells this run resolved none of (cells left out by ``--only`` keep what they read)."""
    cells = expand(suite)
    used = {"models": models_needed(suite, cells), "datasets": {c.dataset for c in cells if c.dataset}}
    today = {"models": {k: v.fingerprint() for k, v in plan.models.items()}, "datasets": plan.datasets}
    out = {}
    for key, names in used.items():
        before = previous.get(key) if isinstance(previous.get(key), dict) else {}
        out[key] = {**{k: v for k, v in before.items() if k in names}, **today[key]}
    return out
