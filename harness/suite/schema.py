"""The suite's schema: one pydantic model whose backend and task entries are the registries' settings
classes (a tagged union on ``type``), so a new plug-in's keys are validated without editing this file."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import Field, field_validator

from harness.backends import BACKENDS
from harness.core.contention import BusySettings
from harness.core.settings import StrictModel
from harness.core.suite_gates import Gate, check_gates
from harness.sources.corpora import DatasetSpec
from harness.sources.models import ModelSpec
from harness.suite.executor import ExecutorSettings
from harness.tasks import TASKS


def _tagged_union(classes):
    members = tuple(c.settings_class for c in classes)
    if len(members) == 1:
        return members[0]
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007


BackendSettingsUnion = _tagged_union(BACKENDS.values())
TaskSettingsUnion = _tagged_union(TASKS.values())




class MatrixEntry(StrictModel):
    """One row of ``matrix:``: the cartesian product of its models, backends and tasks."""

    model: str | list[str]
    backend: str | list[str]
    task: str | list[str]

    def product(self):
        as_list = [v if isinstance(v, list) else [v] for v in (self.model, self.backend, self.task)]
        for m in as_list[0]:
            for b in as_list[1]:
                for t in as_list[2]:
                    yield m, b, t


class Suite(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    timeout_s: float = Field(3600.0, gt=0, description="wall-clock limit of one cell, load included")
    models: dict[str, ModelSpec]
    backends: dict[str, BackendSettingsUnion]
    datasets: dict[str, DatasetSpec] = {}
    tasks: dict[str, TaskSettingsUnion]
    matrix: list[MatrixEntry] = Field(min_length=1)
    gates: dict[str, Gate] = Field({}, description="per-metric gates of `harness compare` and `history`, "
                                   "overriding the metric's own gate (its record, harness.core.metrics.Metric)")
    probe: bool = Field(True, description="measure the machine's memory bandwidth and GEMM rate once per run "
                        "(cached a day) for the throughput cells' MBU and MFU; a run-level key, no cell id moves")
    busy: BusySettings = Field(default_factory=BusySettings, description="when a timing counts as measured on a "
                               "busy machine, and the wait for a quiet one; a run-level key, no cell id moves")
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings,
                                       description="where cells run (--executor and --address win); "
                                       "not part of any cell id")

    @field_validator("models", "backends", "tasks")
    @classmethod
    def _not_empty(cls, value):
        if not value:
            raise ValueError("expected at least one entry")
        return value

    @field_validator("gates")
    @classmethod
    def _known_metrics(cls, value):
        check_gates(value)
        return value


def json_schema() -> dict[str, Any]:
    return Suite.model_json_schema()

