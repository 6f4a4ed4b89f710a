"""Everything a run needs settled before any cell starts: backend packages installed, models located and
fingerprinted (n-grams trained on demand later; Llama models trained now, once for every cell that uses them),
corpora read, the run directory chosen and writable.
``harness validate`` runs the same checks (:func:`check_inputs`) without resolving or writing anything."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness.backends import BACKENDS
from harness.core.errors import MissingDependency, UserError, ensure_available, located, warn
from harness.core.files import check_output, output_folder
from harness.results.records import FAILED, SKIPPED
from harness.run.rundir import check_foreign
from harness.sources.child import ChildFailed
from harness.sources.corpora import Corpus, DatasetSpec, load_corpus
from harness.sources.models import (
    ModelSpec,
    ResolvedModel,
    check_gguf,
    check_source,
    locate,
    resolve,
    resolve_ngram,
    resolve_trained,
    trained_context,
)
from harness.sources.quantization import Calibration
from harness.suite.cells import Cell
from harness.suite.executor import ExecutorSettings
from harness.suite.schema import Suite
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
    #: the command line's executor (None: the suite's)
    executor: ExecutorSettings | None = None
    #: ``--wait-quiet`` seconds (None: the suite's ``busy.wait_quiet_s``)
    wait_quiet_s: float | None = None


@dataclass
class Plan:
    """What :func:`prepare` settled: where results go, the models by name, the corpora's fingerprints."""

    run_dir: Path
    models: dict[str, ResolvedModel]
    datasets: dict[str, dict]
    #: models not resolved because their quantization method's libraries are not installed, with the reason:
    #: their cells are skipped (:func:`unavailable_models`)
    unavailable: dict[str, str] = field(default_factory=dict)
    #: models whose making failed (a library raised while training or quantizing), with the reason: their cells
    #: fail, the others run
    failed: dict[str, str] = field(default_factory=dict)

    def unresolved(self, suite: Suite, cell: Cell) -> tuple[str, str] | None:
        """Whether ``cell`` cannot run because a model it uses was not resolved: (status, reason), or None."""
        for status, models in ((FAILED, self.failed), (SKIPPED, self.unavailable)):
            reasons = [models[m] for m in sorted(models_of(suite, cell)) if m in models]
            if reasons:
                return status, reasons[0]
        return None


def check_inputs(suite: Suite, cells: list[Cell], suite_path: Path,
                 corpora: Path | None) -> tuple[dict[str, Corpus], dict[str, dict]]:
    """Everything `validate` can check without the network: backend packages are installed, model files
    and corpora exist and are sane. Returns the datasets it read and the fingerprints of the n-gram and
    trained models' texts by source (each read once, however many models learn from it)."""
    base_dir = suite_path.resolve().parent
    for name in sorted({c.backend for c in cells}):
        backend_cls = BACKENDS[suite.backends[name].type]
        with located(suite_path, f"backends.{name}.type"):
            backend_cls.ensure_dependencies(suite.backends[name])
    train_texts: dict[str, dict] = {}
    trained: dict[str, int | None] = {}
    for name in sorted(models_needed(suite, cells)):
        spec = suite.models[name]
        with located(suite_path, f"models.{name}.{spec.source_kind}"):
            path = locate(spec, base_dir, fetch=False)
            if path is not None:
                check_source(spec, path)
            # a model still to train: its context is known before it is trained (hours, maybe)
            trained[name] = (spec.train.context if spec.source_kind == "train"
                             else trained_context(spec.source_kind, path))
        sources = []
        if spec.kind == "ngram":
            sources = [(s, "ngram.train" if isinstance(spec.ngram.train, str) else f"ngram.train[{i}]")
                       for i, s in enumerate(spec.ngram.sources)]
        if spec.source_kind == "train":
            sources = [(suite.datasets[d].source, f"train.dataset ({d})") for d in spec.train.datasets]
            check_trainable(spec, base_dir, suite_path, f"models.{name}.train")
        for source, key in sources:
            if source not in train_texts:
                with located(suite_path, f"models.{name}.{key}"):
                    corpus = load_corpus(source, DatasetSpec(source=source), base_dir, corpora)
                train_texts[source] = corpus.fingerprint()
    check_context(suite, cells, suite_path, trained)
    for name, spec in suite.tasks.items():  # a cell's task is the suite's task name, or it plus a variant's suffix
        if not any(c.task == name or c.task.startswith(name + ".") for c in cells):
            continue
        with located(suite_path, f"tasks.{name}"):
            TASKS[spec.type].check_inputs(spec, base_dir)
    for name, reason in unavailable_models(suite, cells).items():
        warn(f"{suite_path}: models.{name}.quantize: {reason}; the cells of '{name}' are skipped")
    loaded = {}
    calibrated_on = {m.calibration_dataset for m in _calibrated(suite, cells).values()}
    for name in sorted({c.dataset for c in cells if c.dataset} | calibrated_on):
        spec = suite.datasets[name]
        if not spec.source.startswith("hf:"):
            with located(suite_path, f"datasets.{name}.source"):
                loaded[name] = load_corpus(name, spec, base_dir, corpora)
    warn_calibrated_on_test_text(suite, cells, suite_path, loaded)
    return loaded, train_texts


def check_trainable(spec: ModelSpec, base_dir: Path, suite_path: Path, where: str) -> None:
    """A model the harness trains: torch and transformers installed, the tokenizer's GGUF readable."""
    with located(suite_path, where):
        for module in ("torch", "transformers"):
            ensure_available(module, "hf", "training a Llama model (train:)")
    with located(suite_path, f"{where}.tokenizer"):
        path = locate(ModelSpec(gguf=spec.train.tokenizer), base_dir, fetch=False)
        if path is not None:
            check_gguf(path)


def check_context(suite: Suite, cells: list[Cell], suite_path: Path, trained: dict[str, int | None]) -> None:
    """Every cell's context fits its backends' ``n_ctx`` and, unless the task allows the overflow, the
    context its models were trained on (``trained``: by model name, None where unknown): llama.cpp only
    logs a warning and goes on computing numbers of a model used beyond what it learned."""
    for cell in cells:
        needed = TASKS[cell.task_spec.type](cell.task_spec).context_tokens()
        uses = [(cell.model, cell.backend, cell.backend_spec)]
        if cell.reference:
            uses.append((cell.reference.model, cell.reference.backend, cell.reference.backend_spec))
        for model, backend, backend_spec in uses:
            n_ctx = getattr(backend_spec, "n_ctx", None)
            if n_ctx is not None and n_ctx < needed:
                raise UserError(f"{suite_path}: backends.{backend}.n_ctx: {n_ctx:,} is less than the {needed:,} "
                                f"tokens of context task '{cell.task}' needs")
            limit = trained.get(model)
            if limit and needed > limit and not cell.task_spec.allow_context_overflow:
                task = cell.task if cell.task in suite.tasks else cell.task.rpartition(".")[0]
                raise UserError(f"{suite_path}: tasks.{task}: needs {needed:,} tokens of context, more than model "
                                f"'{model}' was trained on ({limit:,}); set allow_context_overflow: true to run "
                                "it anyway")


def calibrations(suite: Suite, cells: list[Cell], suite_path: Path, corpora: Path | None,
                 local: dict[str, Corpus]) -> dict[str, Calibration]:
    """Each model's calibration text, by model name."""
    base_dir = suite_path.resolve().parent
    found = {}
    for name, method in _calibrated(suite, cells).items():
        dataset = method.calibration_dataset
        with located(suite_path, f"models.{name}.quantize.{method.calibration_key}.dataset"):
            corpus = local.get(dataset) or load_corpus(dataset, suite.datasets[dataset], base_dir, corpora)
        found[name] = Calibration(text=corpus.text, sha256=corpus.sha256)
    return found


def _calibrated(suite: Suite, cells: list[Cell]) -> dict:
    """The quantization methods of the cells' models that are calibrated on a dataset, by model name."""
    specs = {name: suite.models[name] for name in sorted(models_needed(suite, cells))}
    return {name: spec.quantization for name, spec in specs.items()
            if spec.quantize is not None and spec.quantization.calibration_dataset is not None}


def warn_calibrated_on_test_text(suite: Suite, cells: list[Cell], suite_path: Path, loaded: dict[str, Corpus]) -> None:
    """A model calibrated on a text one of its cells evaluates gets a warning: an importance matrix (or a
    GPTQ/AWQ calibration) fitted to the test text flatters its quantization there."""
    for name, method in _calibrated(suite, cells).items():
        used = method.calibration_dataset
        calibration = loaded.get(used)
        for dataset in sorted({c.dataset for c in cells if c.model == name and c.dataset}):
            evaluated = loaded.get(dataset)
            if dataset == used or (evaluated and calibration and evaluated.sha256 == calibration.sha256):
                warn(f"{suite_path}: models.{name}.quantize.{method.calibration_key}.dataset: '{used}' is the text "
                     f"its cells evaluate (dataset '{dataset}'): the quantization is calibrated on the test text")


def models_needed(suite: Suite, cells: list[Cell]) -> set[str]:
    """The models the cells use (:func:`models_of`)."""
    return {name for cell in cells for name in models_of(suite, cell)}


def models_of(suite: Suite, cell: Cell) -> set[str]:
    """A cell's model, its reference's, and the model whose tokenizer its n-gram counts in."""
    names = {cell.model} | ({cell.reference.model} if cell.reference else set())
    return names | {suite.models[n].ngram.tokenizer for n in names
                    if suite.models[n].kind == "ngram" and suite.models[n].ngram.tokenizer}


def unavailable_models(suite: Suite, cells: list[Cell]) -> dict[str, str]:
    """The cells' models whose quantization method needs a library this install lacks, with the reason
    (naming the extra). Their cells are skipped, not the run refused: a lab of many families runs those this
    install has (GPTQ and AWQ come with an extra of their own)."""
    missing = {}
    for name in sorted(models_needed(suite, cells)):
        spec = suite.models[name]
        if spec.quantize is None:
            continue
        try:
            spec.quantization.check_available()
        except MissingDependency as exc:
            missing[name] = str(exc)
    return missing


def prepare(suite: Suite, cells: list[Cell], options: RunOptions, corpora: Path | None) -> Plan:
    """Resolve models and corpora and choose the run directory (:func:`ensure_writable` creates it, once the
    executor has taken the cells too); raises UserError on bad input."""
    path, base_dir = options.suite_path, options.suite_path.resolve().parent
    local, train_texts = check_inputs(suite, cells, path, corpora)
    calibration = calibrations(suite, cells, path, corpora, local)
    models, datasets = {}, {}
    unavailable = unavailable_models(suite, cells)
    needed = models_needed(suite, cells) - set(unavailable)
    failed = {}
    for name in sorted(n for n in needed if suite.models[n].source_kind not in ("ngram", "train")):
        with located(path, f"models.{name}"), _contained(failed, path, name):
            models[name] = resolve(name, suite.models[name], base_dir, calibration.get(name))
    for name in sorted(n for n in needed if suite.models[n].source_kind == "train"):
        spec = suite.models[name]
        with located(path, f"models.{name}.train"), _contained(failed, path, name):
            models[name] = resolve_trained(name, spec, [train_texts[suite.datasets[d].source]
                                                        for d in spec.train.datasets], base_dir, corpora,
                                           calibration=calibration.get(name))
    for name in sorted(n for n in needed if suite.models[n].kind == "ngram"):
        spec = suite.models[name]
        with located(path, f"models.{name}.ngram"):
            models[name] = resolve_ngram(name, spec, [train_texts[s] for s in spec.ngram.sources], base_dir, corpora,
                                         models.get(spec.ngram.tokenizer))
    # models a package assembles on first use were unknown to check_inputs: their context is known now
    check_context(suite, cells, path, {n: trained_context(m.kind, m.path) for n, m in models.items()})
    for name in sorted({c.dataset for c in cells if c.dataset}):
        with located(path, f"datasets.{name}.source"):
            corpus = local.get(name) or load_corpus(name, suite.datasets[name], base_dir, corpora)
        datasets[name] = corpus.fingerprint()
    run_dir = choose_run_dir(suite, options)
    check_foreign(run_dir)  # the folder itself is made by the runner, once the executor has accepted the cells
    return Plan(run_dir, models, datasets, unavailable, failed)


@contextmanager
def _contained(failed: dict[str, str], path: Path, name: str):
    """A model whose making fails in a library is noted in ``failed`` (one warning line): its cells fail with the
    reason and the others run, as when a cell fails."""
    try:
        yield
    except ChildFailed as exc:
        failed[name] = str(exc)
        warn(f"{path}: models.{name}: {exc}; its cells fail")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def choose_run_dir(suite: Suite, options: RunOptions) -> Path:
    """``--out``; else with ``--resume`` the suite's latest run; else a new ``results/SUITE/RUN_ID``."""
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
    """The run directory and its folders exist and take files. ``--out`` under a file, or anything there
    that is not a folder (a symbolic link included), is bad input (exit 2); a folder the user may not write,
    a read-only or full disk is the environment's (OSError: exit 4)."""
    try:
        for folder in (run_dir, run_dir / "cells", run_dir / "logs"):
            output_folder(folder)
        check_output(run_dir / "artifacts", folder=True)  # made by the first cell that keeps a file
        probe = run_dir / f".write-test-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # a new file: never through a link
        probe.unlink()
    except (NotADirectoryError, FileExistsError) as exc:
        raise UserError(f"output directory {run_dir} is not writable ({exc.strerror})") from None
