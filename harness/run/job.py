"""A job: one cell (or one round of an interleaved cell) as a worker process receives it, serialized only
at that process boundary. It says what to run and where the worker leaves what it produced."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness.core.files import atomic_write_text
from harness.sources.models import ResolvedModel
from harness.suite.cells import Cell


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Job:
    cell: Cell
    round: int | None
    #: the suite's folder: relative model and corpus paths are read from there
    base_dir: Path
    corpora: Path | None
    model: ResolvedModel
    reference_model: ResolvedModel | None
    #: where the worker writes its record (JSON) and the cell's artifacts
    outcome_path: Path
    artifacts_dir: Path
    started_at: str
    #: the run's machine probes by CPU thread count (:mod:`harness.results.probe`); None: switched off
    probes: dict[str, dict] | None = None
    #: corpus texts shipped with the job, by source (a worker on another machine: see
    #: :func:`harness.sources.corpora.use_texts`); empty: the worker reads the sources itself
    texts: dict[str, Path] = field(default_factory=dict)
    #: the suite's ``busy:`` thresholds (:class:`harness.core.contention.BusySettings`), for the verdict
    busy: dict = field(default_factory=dict)
    #: what the wait for a quiet machine before this job found (``--wait-quiet``); None: no wait
    wait: dict | None = None

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def stem(self) -> str:
        """The name of this job's files: the cell id, plus the round of an interleaved cell."""
        return self.cell_id if self.round is None else f"{self.cell_id}.round{self.round}"

    @property
    def scratch_dir(self) -> Path:
        """The cell's temp folder, beside its outcome: its executor removes it when the cell ends."""
        return self.outcome_path.with_name(f"{self.stem}.scratch")

    def to_json(self) -> dict:
        return {"cell": self.cell.model_dump(mode="json"), "round": self.round, "base_dir": str(self.base_dir),
                "corpora": str(self.corpora) if self.corpora else None, "model": _model_json(self.model),
                "reference_model": _model_json(self.reference_model) if self.reference_model else None,
                "outcome_path": str(self.outcome_path), "artifacts_dir": str(self.artifacts_dir),
                "started_at": self.started_at, "probes": self.probes,
                "texts": {k: str(v) for k, v in self.texts.items()}, "busy": self.busy, "wait": self.wait}

    @classmethod
    def from_json(cls, data: dict) -> Job:
        return cls(cell=Cell.model_validate(data["cell"]), round=data["round"], base_dir=Path(data["base_dir"]),
                   corpora=Path(data["corpora"]) if data["corpora"] else None, model=_model(data["model"]),
                   reference_model=_model(data["reference_model"]) if data["reference_model"] else None,
                   outcome_path=Path(data["outcome_path"]), artifacts_dir=Path(data["artifacts_dir"]),
                   started_at=data["started_at"], probes=data.get("probes"),
                   texts={k: Path(v) for k, v in data.get("texts", {}).items()}, busy=data.get("busy", {}),
                   wait=data.get("wait"))

    def write(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def read(cls, path: Path) -> Job:
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def _model_json(model: ResolvedModel) -> dict:
    return {**asdict(model), "path": str(model.path)}


def _model(data: dict) -> ResolvedModel:
    return ResolvedModel(**{**data, "path": Path(data["path"])})
