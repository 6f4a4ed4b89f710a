"""Cells: the matrix of a suite expanded into units of work, each with its settings typed and resolved,
identified by a hash of those settings (``cell_id``: the key of ``--resume`` and of results)."""

from __future__ import annotations

import fnmatch
import hashlib
import json

from pydantic import BaseModel

from harness.core.errors import UserError
from harness.sources.corpora import DatasetSpec
from harness.sources.models import ModelSpec
from harness.suite.schema import BackendSettingsUnion, Suite, TaskSettingsUnion


def cell_id(model: str, backend: str, task: str, dataset: str | None, params: dict) -> str:
    """Stable content hash of a cell's names and settings (:attr:`Cell.params`): the key for resume and
    compare. A key declared with :func:`harness.core.settings.new_key` is absent from ``params`` while at
    its default, so adding one never moves existing ids."""
    identity = {"model": model, "backend": backend, "task": task, "dataset": dataset,
                **{f"{k}_settings": v for k, v in params.items()}}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class CellReference(BaseModel):
    """A task's ``reference:`` resolved: the model and backend names and their settings."""

    model: str
    backend: str
    model_spec: ModelSpec
    backend_spec: BackendSettingsUnion


class Cell(BaseModel):
    """One (model, backend, task) combination with every setting resolved; the unit of work."""

    suite: str
    model: str
    backend: str
    task: str
    dataset: str | None
    model_spec: ModelSpec
    backend_spec: BackendSettingsUnion
    task_spec: TaskSettingsUnion
    dataset_spec: DatasetSpec | None
    reference: CellReference | None = None

    @property
    def params(self) -> dict:
        """The settings as JSON values: what ``cell_id`` hashes and what the results' ``params`` hold."""
        params = {"model": self.model_spec.model_dump(mode="json"),
                  "backend": self.backend_spec.model_dump(mode="json"),
                  "task": self.task_spec.model_dump(mode="json"),
                  "dataset": self.dataset_spec.model_dump(mode="json") if self.dataset_spec else None}
        if self.reference is not None:  # only then: the ids of cells without one stay as they were
            params["reference"] = self.reference.model_dump(mode="json")
        return params

    @property
    def cell_id(self) -> str:
        return cell_id(self.model, self.backend, self.task, self.dataset, self.params)

    @property
    def label(self) -> str:
        return f"{self.model}/{self.backend}/{self.task}"


def expand(suite: Suite) -> list[Cell]:
    """The matrix as a list of unique cells, in suite order; a task whose settings sweep a list (prompt
    lengths, say) becomes one cell per value, named ``task.SUFFIX``."""
    cells: dict[str, Cell] = {}
    for entry in suite.matrix:
        for m, b, t in entry.product():
            for suffix, task in suite.tasks[t].variants():
                dataset = task.dataset
                cell = Cell(suite=suite.name, model=m, backend=b, task=t + suffix, dataset=dataset,
                            model_spec=suite.models[m], backend_spec=suite.backends[b], task_spec=task,
                            dataset_spec=suite.datasets[dataset] if dataset else None,
                            reference=_reference(suite, task))
                cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def _reference(suite: Suite, task) -> CellReference | None:
    reference = getattr(task, "reference", None)
    if reference is None:
        return None
    return CellReference(model=reference.model, backend=reference.backend,
                         model_spec=suite.models[reference.model],
                         backend_spec=suite.backends[reference.backend])




def select_cells(cells: list[Cell], patterns: list[str]) -> list[Cell]:
    """Cells whose ``model/backend/task`` label or id matches any glob (all cells without patterns)."""
    if not patterns:
        return cells
    if not all(p.strip() for p in patterns):  # '' is a prefix of every id: it would select everything
        raise UserError("--only '': expected a glob of model/backend/task or a cell id prefix")
    return [c for c in cells if any(fnmatch.fnmatchcase(c.label, p) or c.cell_id.startswith(p)
                                    for p in patterns)]
