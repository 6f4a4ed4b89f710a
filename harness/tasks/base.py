"""The task protocol: a task reads a corpus, drives a backend through its capabilities, returns rows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from harness.core.gates import exact, noisy
from harness.core.metrics import Measurement, Metric, register
from harness.core.settings import StrictModel, new_key
from harness.core.types import LoadInfo

if TYPE_CHECKING:
    from harness.backends.base import Backend
    from harness.sources.corpora import Corpus


#: what every cell reports beside its task's metrics, measured by the worker around the task (harness.run.worker)
CELL_METRICS = tuple(m.name for m in register(
    # often one measurement per cell: only shown, never gated, without samples
    Metric("load_s", "s", False, noisy(1.50), short="load s"),
    Metric("model_bytes", "bytes", False, exact(0.0), short="model MiB"),
    Metric("peak_rss_mb", "MiB", False, exact(0.10), short="peak RSS MiB"),
    Metric("peak_vram_mb", "MiB", False, exact(0.05), short="peak VRAM MiB"),
))
#: what every cell of a quantized model the harness derived reports (from the derivation's quantize.json, also
#: when it came from the cache): the cost of making the quant is part of its trade-off
DERIVED_MODEL_METRICS = tuple(m.name for m in register(
    Metric("quantize_s", "s", False, noisy(1.50), short="quantize s"),
    Metric("quantize_peak_rss_mb", "MiB", False, exact(0.10), short="quantize RSS MiB"),
))


class Reference(StrictModel):
    """A second model a task compares against or scores with (``reference:`` of a task)."""

    model: str
    backend: str


class TaskSettings(StrictModel):
    """Suite settings of one task; each task subclasses it with a ``type`` literal."""

    type: str
    dataset: str | None = None
    allow_context_overflow: bool = new_key(False, description="run even where the task needs more context than "
                                           "the model was trained on (refused otherwise); the cell records it")

    def variants(self) -> list[tuple[str, TaskSettings]]:
        """(name suffix, settings) of each cell this task becomes; a sweep over a list gives several."""
        return [("", self)]


@dataclass
class TaskResult:
    measurements: list[Measurement]
    #: raw per-window / per-repeat samples, kept for significance tests in compare
    samples: dict[str, list[float]] = field(default_factory=dict)
    #: settings the task resolved at run time (add_bos, stride, ...): they change the number
    resolved: dict = field(default_factory=dict)
    #: files kept beside the cell's record (generated texts, traces): name -> text
    artifacts: dict[str, str] = field(default_factory=dict)


class Task(ABC):
    type_name: ClassVar[str]
    settings_class: ClassVar[type[TaskSettings]]
    #: backend capabilities this task needs; a backend lacking one is skipped with a reason
    requires: ClassVar[frozenset[str]]
    #: its figures are speeds: on a cluster a cell of it gets a machine to itself (beside another cell they
    #: would measure the neighbour too)
    timing: ClassVar[bool] = False
    #: the columns of its table in the run's console summary, in order (harness.report.console); empty: the
    #: metrics every cell has (:data:`CELL_METRICS`)
    summary: ClassVar[tuple[str, ...]] = ()
    #: its columns on the dashboard's overview, at most four (harness.report.site); empty: :attr:`summary`
    overview: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: TaskSettings, reference: Backend | None = None):
        self.settings = settings
        #: the ``reference:`` model's backend, constructed but not loaded: the task loads it when it
        #: needs it (and closes it), so its memory is counted in the cell only for that time
        self.reference = reference
        #: what loading the backend gave (bytes, shape); set by the worker before :meth:`run`
        self.loaded: LoadInfo | None = None
        #: the run's machine probes by CPU thread count (:mod:`harness.results.probe`); None: switched off
        self.machine: dict[str, dict] | None = None
        #: the suite file's folder, for paths a task's settings name (set by the worker)
        self.base_dir: Path | None = None
        #: a folder of the cell's own for temp files, removed when the cell ends, killed or not (set by the
        #: worker; None: the system's temp folder)
        self.scratch_dir: Path | None = None

    @abstractmethod
    def context_tokens(self) -> int:
        """Longest sequence the backend must hold at once for this task."""

    @abstractmethod
    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        """Do the work on a loaded backend."""

    @classmethod
    def requirements(cls, settings: TaskSettings) -> frozenset[str]:
        """Capabilities a cell with these settings needs: :attr:`requires`, unless what the task asks of a
        backend depends on its settings."""
        return cls.requires

    @classmethod  # noqa: B027 (most tasks name no inputs but their dataset)
    def check_inputs(cls, settings: TaskSettings, base_dir: Path) -> None:
        """What ``validate`` can check of the inputs a task's settings name besides its dataset (folders,
        names an outside library must know), without running anything; raises UserError. ``base_dir``: the
        suite file's folder."""

    @classmethod
    def rounds(cls, settings: TaskSettings) -> int | None:
        """How many interleaved rounds a cell with these settings runs as (:mod:`harness.run.rounds`), one
        measured repeat per fresh process; None: the cell runs once, as one process."""
        return None

    @classmethod
    def one_round(cls, settings: TaskSettings) -> TaskSettings:
        """The settings one round of an interleaved cell runs with."""
        raise NotImplementedError(f"task {cls.type_name} has no rounds")

    @classmethod
    def summarize(cls, samples: dict[str, list[float]]) -> list[Measurement]:
        """The task's measurements from its raw samples, for tasks whose repeats can be run as
        interleaved rounds and merged (:mod:`harness.run.rounds`)."""
        raise NotImplementedError(f"task {cls.type_name} cannot merge interleaved rounds")
