"""One suite cell of lm-eval: load the task, check the backend can serve its requests, evaluate, and turn
lm-eval's results into the harness's rows."""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from pathlib import Path

from harness.backends.base import Backend
from harness.core.errors import Unavailable
from harness.core.metrics import METRICS, Measurement
from harness.lmeval.model import HarnessLM
from harness.sources.corpora import Corpus
from harness.sources.lmeval_tasks import LOCAL_TASKS, VERSION, write_local_tasks
from harness.tasks.base import TaskResult
from harness.tasks.lmeval import PREFIX, missing_capability

#: lm-eval's name for a metric without a filter
NO_FILTER = "none"


def evaluate_cell(backend: Backend, settings, corpus: Corpus | None, include_paths: list[str]) -> TaskResult:
    import lm_eval
    from lm_eval.tasks import TaskManager

    (name,) = settings.tasks
    with tempfile.TemporaryDirectory(prefix="harness-lmeval-") as scratch:
        local = {}
        if corpus is not None:
            write_local_tasks(Path(scratch), corpus.text, settings.local_docs, settings.seed)
            include_paths = [scratch, *include_paths]
            local = {"local_tasks_version": VERSION, "local_docs": settings.local_docs, "seed": settings.seed}
        manager = TaskManager(include_path=include_paths or None)
        if name not in {*manager.all_tasks, *manager.all_groups, *manager.all_tags, *LOCAL_TASKS}:
            raise ValueError(f"lm-eval knows no task {name!r} (include_path: {include_paths or 'none'})")
        output_types = sorted({t.OUTPUT_TYPE for t in manager.load([name])["tasks"].values()})
        for output_type in output_types:
            why = missing_capability(backend.type_name, backend.capabilities, output_type)
            if why:
                raise Unavailable(f"{name}: {why}")
        model = HarnessLM(loaded=backend, max_length=settings.max_length, batch_size=settings.batch_size)
        start = time.perf_counter()
        results = lm_eval.simple_evaluate(model=model, tasks=[name], num_fewshot=settings.num_fewshot,
                                          limit=settings.limit, task_manager=manager, log_samples=False,
                                          bootstrap_iters=settings.bootstrap_iters)
        elapsed = time.perf_counter() - start
        digest = config_hash(results.get("configs", {}).get(name, {}), scratch)
    measurements, unreported = measurements_from(results, name)
    return TaskResult(measurements=measurements, resolved={
        "lm_eval": lm_eval.__version__, "lmeval_task": name, "output_types": output_types,
        "task_version": results.get("versions", {}).get(name), "config_hash": digest,
        "num_fewshot": results.get("n-shot", {}).get(name), "n_samples": results.get("n-samples", {}).get(name),
        "max_length": settings.max_length, "evaluate_s": elapsed, **local,
        **({"unreported_metrics": unreported} if unreported else {})})


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
