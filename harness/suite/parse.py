"""Suite files: YAML (plus ``--set`` overrides) -> a validated :class:`Suite`.

Every error a user can make in a suite is caught here, before anything runs, and reported as one line:
``FILE: KEY.PATH: what was expected``.
"""

from __future__ import annotations

import os
import stat
import types
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError

from harness.backends import BACKENDS
from harness.core.errors import UserError
from harness.core.paths import expand_user
from harness.core.registry import did_you_mean
from harness.suite.schema import Suite
from harness.tasks import TASKS

#: limits that keep a runaway suite (a generated file, a matrix of every combination) from taking minutes
#: and gigabytes to read: the suite file's size in MB and the cells its matrix expands to
MAX_SUITE_MB, MAX_SUITE_MB_ENV = 10, "HARNESS_MAX_SUITE_MB"
MAX_CELLS, MAX_CELLS_ENV = 100_000, "HARNESS_MAX_CELLS"


class SuiteLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """YAML's safe loader (with libyaml's C parser where PyYAML has it) that refuses a key given twice in one
    mapping: YAML's "the last one wins" would silently drop a first ``matrix:`` or one of two models."""

    def construct_mapping(self, node, deep=False):
        first: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` may be overridden on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (list, dict)):
                continue  # unhashable: the schema refuses it with its key path
            if key in first:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first given at line {first[key]})",
                                       key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str):
    return yaml.load(text, Loader=SuiteLoader)  # noqa: S506 (a safe loader)


def _limit(env: str, default: float) -> float:
    value = os.environ.get(env)
    if value is None:
        return default
    try:
        limit = float(value)
    except ValueError:
        limit = 0
    if not limit > 0:
        raise UserError(f"{env}={value}: expected a number > 0")
    return limit


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


def _keys_at(loc: tuple, raw: dict) -> list[str]:
    """The keys the settings object at ``loc`` (a cleaned error location) accepts: walk the suite's schema
    along it, picking a backend's or task's settings class by the ``type`` the suite gives."""
    annotation, node = Suite, raw
    for part in (*loc, None):
        while True:  # Annotated / Optional / unions down to one class or container
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            origin = typing.get_origin(annotation)
            if origin is typing.Annotated:
                annotation = args[0]
            elif origin in (typing.Union, types.UnionType):
                models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
                typed = [m for m in models if isinstance(node, dict) and "type" in m.model_fields
                         and node.get("type") in typing.get_args(m.model_fields["type"].annotation)]
                annotation = (typed or models or [args[0]])[0]
            else:
                break
        if part is None:
            return list(annotation.model_fields) if isinstance(annotation, type) and issubclass(
                annotation, BaseModel) else []
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            annotation = field.annotation if field else None
        elif typing.get_origin(annotation) in (dict, list):
            annotation = typing.get_args(annotation)[-1 if typing.get_origin(annotation) is dict else 0]
        else:
            return []
        node = node.get(part) if isinstance(node, dict) else (
            node[part] if isinstance(node, list) and isinstance(part, int) and part < len(node) else None)
    return []


def _describe(error: dict, raw: dict) -> str:
    loc = _clean_loc(tuple(error["loc"]), raw)
    where = _format_loc(loc) or "(top level)"
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return f"{where}: unknown key{did_you_mean(loc[-1], _keys_at(loc[:-1], raw))}"
    if kind == "missing":
        return f"{where}: required key is missing"
    if kind == "union_tag_invalid":
        registry = BACKENDS if loc and loc[0] == "backends" else TASKS
        return f"{where}.type: {registry.unknown(error['input'].get('type'))}"
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
            parsed = load_yaml(value)
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
    path = expand_user(path)
    try:
        info, limit = path.stat(), _limit(MAX_SUITE_MB_ENV, MAX_SUITE_MB)
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the read, a device never end
            raise UserError(f"{path}: not a regular file, expected a suite file (YAML)")
        if info.st_size > limit * 1e6:
            raise UserError(f"{path}: the suite file has {info.st_size / 1e6:.1f} MB, more than the limit of "
                            f"{limit:g} MB (set {MAX_SUITE_MB_ENV} to raise it)")
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        raise UserError(f"{path}: suite file not found") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: cannot read suite file ({exc})") from None
    # any other OSError (permission denied, an I/O error) is the environment's: exit 4 with its one line
    try:
        raw = load_yaml(text)
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
    _check_size(path, suite)
    _check_references(path, suite)
    return suite, raw


def _check_size(path: Path, suite: Suite) -> None:
    """Refuse a matrix of more cells than the limit before any cell is made (counting duplicates, which
    expansion would merge: an upper bound)."""
    limit = _limit(MAX_CELLS_ENV, MAX_CELLS)
    variants = {name: len(task.variants()) for name, task in suite.tasks.items()}
    total = 0
    for entry in suite.matrix:
        models, backends, tasks = ([v] if isinstance(v, str) else v for v in (entry.model, entry.backend, entry.task))
        total += len(models) * len(backends) * sum(variants.get(t, 1) for t in tasks)
    if total > limit:
        raise UserError(f"{path}: matrix: expands to {total:,} cells, more than the limit of {limit:,.0f} "
                        f"(set {MAX_CELLS_ENV} to raise it)")


def _undefined(path: Path, where: str, kind: str, name: str, defined) -> UserError:
    return UserError(f"{path}: {where}: {kind} '{name}' is not defined (defined: "
                     f"{', '.join(sorted(defined)) or 'none'})")


def _check_references(path: Path, suite: Suite) -> None:
    for mname, model in suite.models.items():
        calibration = model.quantization.calibration_dataset if model.quantize is not None else None
        if calibration is not None and calibration not in suite.datasets:
            raise _undefined(path, f"models.{mname}.quantize.{model.quantization.calibration_key}.dataset", "dataset",
                             calibration, suite.datasets)
        if model.kind == "ngram" and model.ngram.tokenizer is not None:
            name = model.ngram.tokenizer
            if name not in suite.models:
                raise _undefined(path, f"models.{mname}.ngram.tokenizer", "model", name, suite.models)
            if suite.models[name].kind != "gguf":
                raise UserError(f"{path}: models.{mname}.ngram.tokenizer: expected a GGUF model, "
                                f"'{name}' is {suite.models[name].kind}")
        if model.kind == "train":
            for name in model.train.datasets:
                if name not in suite.datasets:
                    raise _undefined(path, f"models.{mname}.train.dataset", "dataset", name, suite.datasets)
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


