"""lm-eval: accuracy (and lm-eval's perplexities) on lm-evaluation-harness tasks, through any backend.

``tasks: {acc: {type: lm-eval, tasks: [hellaswag, arc_easy], num_fewshot: 0, limit: 500}}`` becomes one cell
per lm-eval task (``acc.hellaswag``, ``acc.arc_easy``). The cell's loaded backend is handed to lm-eval as a
model (:class:`harness.lmeval.model.HarnessLM`); lm-eval builds the requests, scores them through the
backend and aggregates. Its metrics come back as rows named ``lmeval_<metric>`` (lm-eval's ``bits_per_byte``
is not the perplexity task's), with lm-eval's stderr and document count; the lm-eval task's version and a
hash of its resolved config go in the cell's resolved params. A task whose requests the backend cannot serve
(``generate_until`` without generation) is skipped with that reason.

Offline: with a ``dataset:``, the local tasks ``harness_cloze`` and ``harness_rolling``
(:mod:`harness.sources.lmeval_tasks`) are built from that text; ``include_path`` names folders of the suite's
own lm-eval task YAMLs.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from harness.backends.base import Backend
from harness.core.capabilities import LMEVAL_NEEDS, lmeval_missing
from harness.core.errors import Unavailable, UserError, require
from harness.core.gates import BY_STDERR, exact
from harness.core.metrics import METRICS, Measurement, Metric, register
from harness.core.registry import did_you_mean
from harness.sources.cache import cache_dir
from harness.sources.corpora import Corpus
from harness.sources.lmeval_tasks import CLOZE, LOCAL_TASKS, ROLLING, VERSION, write_local_tasks
from harness.tasks.base import Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task

#: the local tasks' request kinds, known before lm-eval loads them
LOCAL_NEEDS = {CLOZE: LMEVAL_NEEDS["multiple_choice"], ROLLING: LMEVAL_NEEDS["loglikelihood_rolling"]}


class LmEvalSettings(TaskSettings):
    type: Literal["lm-eval"]
    tasks: list[str] = Field(min_length=1, description="lm-eval task names; each becomes a cell of its own")
    dataset: str | None = Field(None, description="a text to build the local tasks harness_cloze and "
                                "harness_rolling from (offline accuracy)")
    num_fewshot: int | None = Field(None, ge=0, description="default: the task's own")
    limit: int | float | None = Field(None, gt=0, description="documents per task (a fraction below 1)")
    max_length: int = Field(2048, ge=8, description="tokens per request; longer ones are cut from the left, "
                            "rolling windows are this long (lm-eval's default for models that name none)")
    batch_size: int = Field(64, ge=1, description="requests handed to the backend at once")
    include_path: str | list[str] | None = Field(None, description="folders of lm-eval task YAMLs (relative to "
                                                 "the suite file)")
    local_docs: int = Field(500, ge=1, description="documents built per local task")
    seed: int = Field(1234, description="the local cloze task's draws")
    bootstrap_iters: int = Field(100000, ge=0, description="lm-eval's bootstrap for the stderr of metrics "
                                 "without a closed form; 0: none")

    @field_validator("tasks")
    @classmethod
    def _names(cls, value):
        bad = [t for t in value if not t or "." in t or "/" in t]
        if bad:
            raise ValueError(f"expected lm-eval task names (no '.' or '/'), got {bad}")
        if len(set(value)) != len(value):
            raise ValueError("a task is named twice")
        return value

    @model_validator(mode="after")
    def _local_tasks_need_a_text(self):
        local = [t for t in self.tasks if t in LOCAL_TASKS]
        if local and self.dataset is None:
            raise ValueError(f"{', '.join(local)}: the local tasks are built from a text: set dataset")
        return self

    def variants(self) -> list[tuple[str, LmEvalSettings]]:
        return [(f".{name}", self.model_copy(update={"tasks": [name]})) for name in self.tasks]

    @property
    def include_paths(self) -> list[str]:
        paths = self.include_path
        return [] if paths is None else [paths] if isinstance(paths, str) else list(paths)


def include_folder(path: str, base_dir: Path) -> Path:
    """An ``include_path`` entry: an existing folder inside the suite file's folder ``base_dir``."""
    folder = (base_dir / path).resolve()
    if not folder.is_relative_to(base_dir.resolve()) or folder == Path(folder.anchor):
        raise UserError(f"include_path: {path!r} is outside the suite's folder {base_dir}: lm-eval task YAMLs "
                        "must sit beside the suite")
    if not folder.is_dir():
        raise UserError(f"include_path: {path!r}: no such folder ({folder})")
    return folder


PREFIX = "lmeval_"
#: lm-eval's own metric names, prefixed so that none is mistaken for the harness's (its bits_per_byte counts a
#: document's bytes, ours a window scheme's); accuracies are judged by their stderr, perplexities as ours
register(
    Metric(PREFIX + "acc", "ratio", True, BY_STDERR, short="acc", fraction=True, with_stderr=True),
    Metric(PREFIX + "acc_norm", "ratio", True, BY_STDERR, short="acc norm", fraction=True, with_stderr=True),
    *(Metric(PREFIX + name, "ratio", True, BY_STDERR) for name in ("acc_mutual_info", "exact_match", "f1", "mcc")),
    Metric(PREFIX + "perplexity", "ppl", False, exact(0.001)),
    Metric(PREFIX + "word_perplexity", "ppl", False, exact(0.001), short="word ppl"),
    Metric(PREFIX + "byte_perplexity", "ppl", False, exact(0.001)),
    Metric(PREFIX + "bits_per_byte", "bits/byte", False, exact(0.001), short="bits/byte"),
)


@register_task("lm-eval")
class LmEvalTask(Task):
    settings_class = LmEvalSettings
    #: what a task needs depends on its requests, known once lm-eval has loaded it (:meth:`requirements`)
    requires = frozenset()
    summary = ("lmeval_acc", "lmeval_acc_norm", "lmeval_bits_per_byte", "lmeval_word_perplexity", "peak_rss_mb")
    settings: LmEvalSettings

    @classmethod
    def requirements(cls, settings: LmEvalSettings) -> frozenset[str]:
        """The local tasks' needs are known before any process starts; lm-eval's own tasks are checked in
        the cell, once lm-eval has read their output type."""
        return frozenset().union(*(LOCAL_NEEDS.get(name, frozenset()) for name in settings.tasks))

    @classmethod
    def check_inputs(cls, settings: LmEvalSettings, base_dir: Path) -> None:
        """Include paths are folders inside the suite's folder (a suite must not make lm-eval read task YAMLs,
        which name datasets and code, from anywhere on the machine), and lm-eval knows every task."""
        includes = [include_folder(path, base_dir) for path in settings.include_paths]
        wanted = [name for name in settings.tasks if name not in LOCAL_TASKS]
        if not wanted:
            return
        require("lm_eval", "lmeval", "task type lm-eval")
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=[str(p) for p in includes] or None)
        known = {*manager.all_tasks, *manager.all_groups, *manager.all_tags}
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise UserError(f"tasks: lm-eval knows no task {unknown[0]!r} (include_path: "
                            f"{', '.join(map(str, includes)) or 'none'}){did_you_mean(unknown[0], sorted(known))}")

    def context_tokens(self) -> int:
        return self.settings.max_length

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        require("lm_eval", "lmeval", "task type lm-eval")
        if len(self.settings.tasks) != 1:  # a cell holds one lm-eval task; more means the suite was not expanded
            raise ValueError("an lm-eval cell runs one task")
        base = self.base_dir or Path.cwd()
        includes = [str(include_folder(p, base)) for p in self.settings.include_paths]
        return evaluate_cell(backend, self.settings, corpus, includes, self.scratch_dir)


#: lm-eval's name for a metric without a filter
NO_FILTER = "none"


def evaluate_cell(backend: Backend, settings: LmEvalSettings, corpus: Corpus | None,
                  include_paths: list[str], scratch_dir: Path | None = None) -> TaskResult:
    """One suite cell of lm-eval: load the task, check the backend can serve its requests, evaluate (the
    backend handed to lm-eval as :class:`harness.lmeval.model.HarnessLM`), and turn lm-eval's results into
    the harness's rows. ``scratch_dir``: the cell's temp folder, which holds the local tasks (removed even if
    the cell is killed)."""
    keep_datasets_in_harness_cache()
    import lm_eval
    from lm_eval.tasks import TaskManager

    from harness.lmeval.model import HarnessLM

    (name,) = settings.tasks
    with tempfile.TemporaryDirectory(prefix="harness-lmeval-", dir=scratch_dir) as scratch:
        local = {}
        if corpus is not None:
            write_local_tasks(scratch, corpus.text, settings.local_docs, settings.seed)
            include_paths = [str(scratch), *include_paths]
            local = {"local_tasks_version": VERSION, "local_docs": settings.local_docs, "seed": settings.seed}
        manager = TaskManager(include_path=include_paths or None)
        if name not in {*manager.all_tasks, *manager.all_groups, *manager.all_tags, *LOCAL_TASKS}:
            raise ValueError(f"lm-eval knows no task {name!r} (include_path: {include_paths or 'none'})")
        output_types = sorted({t.OUTPUT_TYPE for t in manager.load([name])["tasks"].values()})
        for output_type in output_types:
            why = lmeval_missing(backend.type_name, backend.capabilities, output_type)
            if why:
                raise Unavailable(f"{name}: {why}")
        model = HarnessLM(loaded=backend, max_length=settings.max_length, batch_size=settings.batch_size)
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(model=model, tasks=[name], num_fewshot=settings.num_fewshot,
                                          limit=settings.limit, task_manager=manager, log_samples=False,
                                          bootstrap_iters=settings.bootstrap_iters)
        elapsed = time.perf_counter() - start
        digest = config_hash(results.get("configs", {}).get(name, {}), str(scratch))
    measurements, unreported = measurements_from(results, name)
    return TaskResult(measurements=measurements, resolved={
        "lm_eval": lm_eval.__version__, "lmeval_task": name, "output_types": output_types,
        "task_version": results.get("versions", {}).get(name), "config_hash": digest,
        "num_fewshot": results.get("n-shot", {}).get(name), "n_samples": results.get("n-samples", {}).get(name),
        "max_length": settings.max_length, "evaluate_s": elapsed, **local,
        **({"unreported_metrics": unreported} if unreported else {})})


def keep_datasets_in_harness_cache() -> None:
    """The tables ``datasets`` builds for lm-eval (the local tasks' JSON lines, a hub task's downloads) go to the
    harness cache, not ``~/.cache/huggingface``, unless ``HF_DATASETS_CACHE`` says where; for this process (the
    cell's) only, before ``datasets`` is imported."""
    os.environ.setdefault("HF_DATASETS_CACHE", str(cache_dir() / "hf-datasets"))


def config_hash(config: dict, scratch: str) -> str:
    """sha256 (16 hex digits) of the task's config as lm-eval resolved it: the prompt, the metrics, the data.
    The local tasks' scratch folder is left out (it is new every run; their data is the dataset's
    fingerprint, ``local_docs`` and ``seed``)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":")).replace(scratch, "<local>")
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measurements_from(results: dict, name: str) -> tuple[list[Measurement], dict]:
    """``lmeval_<metric>`` rows of one task's results (the unfiltered value where a metric has several
    filters, else the first filter's), and the values no registered metric takes, by lm-eval's key."""
    values = results["results"][name]
    n_samples = results.get("n-samples", {}).get(name, {})
    n = n_samples.get("effective") if isinstance(n_samples, dict) else None
    by_metric: dict[str, list[str]] = {}
    for key in values:
        metric, sep, filter_name = key.partition(",")
        if sep and not metric.endswith("_stderr"):
            by_metric.setdefault(metric, []).append(filter_name)
    out, unreported = [], {}
    for metric, filters in by_metric.items():
        chosen = NO_FILTER if NO_FILTER in filters else sorted(filters)[0]
        value = _number(values[f"{metric},{chosen}"])
        if PREFIX + metric not in METRICS or value is None:
            unreported.update({f"{metric},{f}": values[f"{metric},{f}"] for f in filters})
            continue
        stderr = _number(values.get(f"{metric}_stderr,{chosen}"))
        out.append(Measurement(PREFIX + metric, value, n, stderr=stderr))
        unreported.update({f"{metric},{f}": values[f"{metric},{f}"] for f in filters if f != chosen})
    return out, unreported


def _number(value) -> float | None:
    """lm-eval writes "N/A" for a stderr it did not compute."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
