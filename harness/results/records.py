"""A cell's record: what one cell produced, as written to ``cells/<cell_id>.json`` when the cell ends (or
``cells/<cell_id>.round<r>.json`` for one round of an interleaved cell). The worker makes it, an executor
brings it back, the runner writes it, the result tables are built from it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from harness.core.filenames import PLAIN
from harness.core.files import Damaged, atomic_write_text, read_json_object
from harness.core.metrics import METRICS
from harness.results.schema import SCHEMA, migrate

OK, FAILED, TIMEOUT, SKIPPED = "ok", "failed", "timeout", "skipped"

class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class _Names(_Strict):
    """What the tables and every reader take from a record's ``cell``."""

    suite: str
    model: str
    backend: str
    task: str
    dataset: str | None


class _Row(_Strict):
    """One measurement: a registered metric (names reach file names and web pages) and numbers."""

    metric: str
    value: float
    unit: str | None = None
    higher_is_better: bool | None = None
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    stderr: float | None = None

    @field_validator("metric")
    @classmethod
    def _registered(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(f"{metric!r} is not a metric of harness.core.metrics")
        return metric


class _Shape(_Strict):
    """A record file as the harness writes it: a record from elsewhere (a copied shard) that does not fit
    is damaged, set aside like a truncated one, never half-read into the tables."""

    cell_id: str
    cell: _Names
    params: dict
    status: Literal["ok", "failed", "timeout", "skipped"]
    reason: str | None = None
    measurements: list[_Row] = []
    samples: dict[str, list[float]] = {}
    resolved: dict = {}
    fingerprints: dict | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    round: int | None = None

    @field_validator("cell_id")
    @classmethod
    def _plain(cls, cell_id: str) -> str:
        if not PLAIN.fullmatch(cell_id):  # it names the cell's files
            raise ValueError(f"{cell_id!r} is not a cell id (letters, digits, '_.-')")
        return cell_id


def _problem(exc: ValidationError) -> str:
    """The first thing wrong with a record, in one line."""
    error = exc.errors()[0]
    where = ".".join(map(str, error["loc"])) or "record"
    if error["type"] in ("model_type", "dict_type"):
        return f"{where}: expected a JSON object, got {error['input']!r:.40}"
    return f"{where}: {error['msg'].removeprefix('Value error, ')}"


@dataclass
class CellRecord:
    cell_id: str
    #: the cell's names and settings as JSON (``Cell.model_dump(mode="json")``)
    cell: dict
    #: the settings that identify the cell (``Cell.params``)
    params: dict
    status: str
    reason: str | None = None
    #: one ``Measurement.row()`` per metric
    measurements: list[dict] = field(default_factory=list)
    #: raw per-window / per-repeat samples, by name
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: what was resolved at run time (threads, add_bos, memory before/after load, where it ran)
    resolved: dict = field(default_factory=dict)
    fingerprints: dict | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_s: float | None = None
    #: the round of an interleaved cell this record is (None: the whole cell)
    round: int | None = None
    schema: int = SCHEMA

    @property
    def ok(self) -> bool:
        return self.status == OK

    def to_json(self) -> dict:
        data = asdict(self)
        if self.round is None:
            del data["round"]
        return data

    @classmethod
    def from_json(cls, data: dict, path: Path) -> CellRecord:
        data = migrate(data, path)
        try:
            _Shape.model_validate(data)
        except ValidationError as exc:
            raise Damaged(path, f"not a cell record ({_problem(exc)})") from None
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def cell_record_path(run_dir: Path, cell_id: str, round_: int | None = None) -> Path:
    """A cell's record; an interleaved cell also has one per round until they are merged."""
    return run_dir / "cells" / (f"{cell_id}.json" if round_ is None else f"{cell_id}.round{round_}.json")


def artifact_path(run_dir: Path, cell_id: str, name: str) -> Path:
    return run_dir / "artifacts" / cell_id / name


def read_record(path: Path) -> CellRecord:
    return CellRecord.from_json(read_json_object(path, "a cell record"), path)


def record_files(run_dir: Path) -> list[Path]:
    """Every record file: the cells' and the interleaved rounds' (not an executor's job or outcome file)."""
    return sorted(p for p in (run_dir / "cells").glob("*.json") if not p.name.endswith((".job.json", ".outcome.json")))


def damaged_records(run_dir: Path) -> list[Damaged]:
    """The record files that do not parse (a truncated copy, a disk that filled), as errors naming each."""
    damaged = []
    for path in record_files(run_dir):
        try:
            read_record(path)
        except Damaged as exc:
            damaged.append(exc)
    return damaged


def read_cell_records(run_dir: Path, order: list[str] | None = None, skip: set[Path] = frozenset()
                      ) -> list[CellRecord]:
    """The finished cells' records, in ``order`` of cell ids (suite order) where given; then only those:
    a resumed run whose suite changed a cell's settings leaves the old cell's record behind. A damaged
    record raises :class:`Damaged` naming it (the runner sets such files aside first)."""
    records = [read_record(path) for path in record_files(run_dir)
               if path.name.count(".") == 1 and path not in skip]  # not an interleaved round
    if order is None:
        return sorted(records, key=lambda r: r.cell_id)
    rank = {cell_id: i for i, cell_id in enumerate(order)}
    return sorted((r for r in records if r.cell_id in rank), key=lambda r: rank[r.cell_id])


def write_cell_record(run_dir: Path, record: CellRecord) -> None:
    atomic_write_text(cell_record_path(run_dir, record.cell_id, record.round), json.dumps(record.to_json(), indent=1))
