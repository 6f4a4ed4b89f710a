"""A cell's record: what one cell produced, as written to ``cells/<cell_id>.json`` when the cell ends (or
``cells/<cell_id>.round<r>.json`` for one round of an interleaved cell). The worker makes it, a launcher
brings it back, the runner writes it, the result tables are built from it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.core.files import Damaged, atomic_write_text, read_json_object
from harness.results.schema import SCHEMA, migrate

OK, FAILED, TIMEOUT, SKIPPED = "ok", "failed", "timeout", "skipped"

#: the JSON type of each record field the readers index into (a copied or hand-edited record may hold anything)
_JSON_TYPES = {"cell_id": str, "cell": dict, "params": dict, "status": str, "measurements": list, "samples": dict,
               "resolved": dict}
_JSON_NAMES = {str: "string", dict: "object", list: "array"}
#: the names in a record's ``cell`` that the result tables read
CELL_KEYS = frozenset({"suite", "model", "backend", "task", "dataset"})


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
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for name, kind in _JSON_TYPES.items():
            if name in known and not isinstance(known[name], kind):
                raise Damaged(path, f"not a cell record ({name}: expected a JSON {_JSON_NAMES[kind]}, "
                              f"got {type(known[name]).__name__})")
        if not all(isinstance(m, dict) for m in known.get("measurements", [])):
            raise Damaged(path, "not a cell record (measurements: expected an array of objects)")
        missing = CELL_KEYS - set(known.get("cell", CELL_KEYS))
        if missing:
            raise Damaged(path, f"not a cell record (cell: missing {', '.join(sorted(missing))})")
        try:
            return cls(**known)
        except TypeError as exc:  # a required field missing
            raise Damaged(path, f"not a cell record ({exc})") from None


def cell_record_path(run_dir: Path, cell_id: str, round_: int | None = None) -> Path:
    """A cell's record; an interleaved cell also has one per round until they are merged."""
    return run_dir / "cells" / (f"{cell_id}.json" if round_ is None else f"{cell_id}.round{round_}.json")


def artifact_path(run_dir: Path, cell_id: str, name: str) -> Path:
    return run_dir / "artifacts" / cell_id / name


def read_record(path: Path) -> CellRecord:
    return CellRecord.from_json(read_json_object(path, "a cell record"), path)


def record_files(run_dir: Path) -> list[Path]:
    """Every record file: the cells' and the interleaved rounds' (not a launcher's job or outcome file)."""
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
