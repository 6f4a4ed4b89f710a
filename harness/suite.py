"""Suite files: YAML -> validated settings -> the matrix of cells to run.

Every error a user can make in a suite is caught here, before anything runs, and reported as one line:
``FILE: KEY.PATH: what was expected``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator

from harness.backends import BACKENDS
from harness.config import StrictModel
from harness.data import DatasetSpec
from harness.errors import UserError
from harness.gates import Gate, check_gates
from harness.models import ModelSpec
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
                                   "overriding the defaults (harness.gates.DEFAULTS)")

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


class Cell(BaseModel):
    """One (model, backend, task) combination with every setting resolved; the unit of work."""

    suite: str
    model: str
    backend: str
    task: str
    dataset: str | None
    model_spec: dict
    backend_spec: dict
    task_spec: dict
    dataset_spec: dict | None
    #: the task's ``reference:`` resolved: model and backend names and their settings
    reference: dict | None = None

    @property
    def params(self) -> dict:
        params = {"model": self.model_spec, "backend": self.backend_spec, "task": self.task_spec,
                  "dataset": self.dataset_spec}
        if self.reference is not None:  # only then: the ids of cells without one stay as they were
            params["reference"] = self.reference
        return params

    @property
    def cell_id(self) -> str:
        """Stable content hash of the names and resolved settings: the key for resume and compare."""
        identity = {"model": self.model, "backend": self.backend, "task": self.task,
                    "dataset": self.dataset, **{f"{k}_settings": v for k, v in self.params.items()}}
        blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return f"{self.model}/{self.backend}/{self.task}"


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _clean_loc(loc: tuple, raw: dict) -> tuple:
    """Drop the union tag pydantic inserts (``tasks.ppl.perplexity.n_ctx`` -> ``tasks.ppl.n_ctx``)."""
    if len(loc) >= 3 and loc[0] in ("backends", "tasks"):
        entry = raw.get(loc[0], {}).get(loc[1]) if isinstance(raw.get(loc[0]), dict) else None
        if isinstance(entry, dict) and entry.get("type") == loc[2] and len(BACKENDS if loc[0] ==
                                                                          "backends" else TASKS) > 1:
            return loc[:2] + loc[3:]
    return loc


def _describe(error: dict, raw: dict) -> str:
    loc = _clean_loc(tuple(error["loc"]), raw)
    where = _format_loc(loc) or "(top level)"
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "union_tag_invalid":
        registry = BACKENDS if loc and loc[0] == "backends" else TASKS
        return f"{where}.type: expected one of {sorted(registry)}, got {error['input'].get('type')!r}"
    if kind == "union_tag_not_found":
        registry = BACKENDS if loc and loc[0] == "backends" else TASKS
        return f"{where}: missing key 'type', expected one of {sorted(registry)}"
    got = error.get("input")
    shown = "" if isinstance(got, (dict, list)) else f", got {got!r}"
    return f"{where}: {msg.removeprefix('Value error, ')}{shown}"


def apply_overrides(path: Path, raw: dict, overrides: list[str]) -> dict:
    """``KEY.PATH=VALUE`` settings from the command line (VALUE read as YAML, ``null`` unsets) on top of the
    file, so a variant of a suite (the nightly's full-length run of a CI-sized suite) needs no copy of it."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise UserError(f"--set {item}: expected KEY.PATH=VALUE, e.g. tasks.kld.max_tokens=null")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {item}: the value is not valid YAML") from None
        node = raw
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"{path}: --set {item}: {'.'.join(parts[:depth + 1])} is not a mapping")
        node[parts[-1]] = parsed
    return raw


def parse_suite(path: Path, overrides: list[str] = ()) -> tuple[Suite, dict]:
    """Read and validate a suite file (with command-line overrides), or raise UserError with one line
    naming file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: suite file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read suite file ({exc})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: {where}invalid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of suite keys at the top level, got "
                        f"{type(raw).__name__}")
    raw = apply_overrides(path, raw, list(overrides))
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        where = _format_loc(_clean_loc(tuple(errors[0]["loc"]), raw))
        culprit = [o for o in overrides if where.startswith(o.partition("=")[0])]
        cause = f" (from --set {culprit[-1]})" if culprit else ""
        raise UserError(f"{path}: {_describe(errors[0], raw)}{more}{cause}") from None
    _check_references(path, suite)
    return suite, raw


def _undefined(path: Path, where: str, kind: str, name: str, defined) -> UserError:
    return UserError(f"{path}: {where}: {kind} '{name}' is not defined (defined: "
                     f"{', '.join(sorted(defined)) or 'none'})")


def _check_references(path: Path, suite: Suite) -> None:
    for mname, model in suite.models.items():
        if model.kind == "ngram" and model.ngram.tokenizer is not None:
            name = model.ngram.tokenizer
            if name not in suite.models:
                raise _undefined(path, f"models.{mname}.ngram.tokenizer", "model", name, suite.models)
            if suite.models[name].kind != "gguf":
                raise UserError(f"{path}: models.{mname}.ngram.tokenizer: expected a GGUF model, "
                                f"'{name}' is {suite.models[name].kind}")
    for tname, task in suite.tasks.items():
        if task.dataset is not None and task.dataset not in suite.datasets:
            raise _undefined(path, f"tasks.{tname}.dataset", "dataset", task.dataset, suite.datasets)
        reference = getattr(task, "reference", None)
        if reference is not None:
            for key, name, defined in (("model", reference.model, suite.models),
                                       ("backend", reference.backend, suite.backends)):
                if name not in defined:
                    raise _undefined(path, f"tasks.{tname}.reference.{key}", key, name, defined)
            _check_loads(path, f"tasks.{tname}.reference", suite, reference.model, reference.backend)
    for i, entry in enumerate(suite.matrix):
        for m, b, t in entry.product():
            for key, name, defined in (("model", m, suite.models), ("backend", b, suite.backends),
                                       ("task", t, suite.tasks)):
                if name not in defined:
                    raise _undefined(path, f"matrix[{i}].{key}", key, name, defined)
            _check_loads(path, f"matrix[{i}]", suite, m, b)


def _check_loads(path: Path, where: str, suite: Suite, model: str, backend: str) -> None:
    backend_cls = BACKENDS[suite.backends[backend].type]
    kind = suite.models[model].kind
    if kind not in backend_cls.model_kinds:
        raise UserError(f"{path}: {where}: backend '{backend}' ({backend_cls.type_name}) cannot load "
                        f"model '{model}' ({kind}); it loads {', '.join(sorted(backend_cls.model_kinds))}")


def expand(suite: Suite) -> list[Cell]:
    """The matrix as a list of unique cells, in suite order; a task whose settings sweep a list (prompt
    lengths, say) becomes one cell per value, named ``task.SUFFIX``."""
    cells: dict[str, Cell] = {}
    for entry in suite.matrix:
        for m, b, t in entry.product():
            for suffix, task in suite.tasks[t].variants():
                dataset = task.dataset
                cell = Cell(
                    suite=suite.name, model=m, backend=b, task=t + suffix, dataset=dataset,
                    model_spec=suite.models[m].model_dump(mode="json"),
                    backend_spec=suite.backends[b].model_dump(mode="json"),
                    task_spec=task.model_dump(mode="json"),
                    dataset_spec=suite.datasets[dataset].model_dump(mode="json") if dataset else None,
                    reference=_reference(suite, task),
                )
                cells.setdefault(cell.cell_id, cell)
    return list(cells.values())


def _reference(suite: Suite, task) -> dict | None:
    reference = getattr(task, "reference", None)
    if reference is None:
        return None
    return {"model": reference.model, "backend": reference.backend,
            "model_spec": suite.models[reference.model].model_dump(mode="json"),
            "backend_spec": suite.backends[reference.backend].model_dump(mode="json")}


def json_schema() -> dict[str, Any]:
    return Suite.model_json_schema()

