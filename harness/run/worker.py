"""Runs one cell in a process of its own: ``python -m harness.run.worker JOB.json``.

A fresh process per cell makes load time cold, peak RSS the cell's own, and a crash (a segfault in
native code, an out-of-memory kill) the cell's alone. The record is written atomically at the end, to
the place the job names; a process that dies before that leaves no record, which its executor reports
as a crash.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from harness.backends import BACKENDS
from harness.backends.base import Backend
from harness.core import contention
from harness.core.canary import canary
from harness.core.errors import Unavailable, describe_os_error
from harness.core.files import atomic_write_text
from harness.core.memory import PeakRSS, hwm_bytes, out_of_memory_cause, out_of_memory_line, rss_mb, ru_maxrss_bytes
from harness.core.metrics import Measurement
from harness.results.environment import machine
from harness.results.records import FAILED, OK, SKIPPED, CellRecord
from harness.run.executor import WORKER_COULD_NOT_WRITE
from harness.run.job import Job, now
from harness.sources.corpora import load_corpus, use_texts
from harness.sources.models import ResolvedModel, trained_context
from harness.tasks import TASKS


def run_job(job: Job) -> dict:
    """Load the backend, run the task, return the record's fields (status ok)."""
    cell = job.cell
    threads = BACKENDS[cell.backend_spec.type].cpu_threads(cell.backend_spec) or len(os.sched_getaffinity(0))
    canary_s = canary(threads) if job.round is not None else None  # before anything of the cell's own runs
    use_texts(job.texts)
    task_cls = TASKS[cell.task_spec.type]
    settings = cell.task_spec if job.round is None else task_cls.one_round(cell.task_spec)
    reference, prepared_reference = None, {}
    if cell.reference:
        reference = make_backend(cell.reference.backend_spec, job.reference_model)
        prepared_reference = reference.prepare()
    task = task_cls(settings, reference)
    corpus = None
    if cell.dataset is not None:
        corpus = load_corpus(cell.dataset, cell.dataset_spec, job.base_dir, job.corpora)
    backend = make_backend(cell.backend_spec, job.model)
    prepared = backend.prepare()
    with PeakRSS() as memory:
        rss_before = rss_mb()
        before = contention.read()  # the timed section: the load (load_s) and the task
        info = backend.load(task.context_tokens())
        rss_loaded = rss_mb()
        job.scratch_dir.mkdir(parents=True, exist_ok=True)
        task.loaded, task.machine, task.base_dir, task.scratch_dir = info, job.probes, job.base_dir, job.scratch_dir
        result = task.run(backend, corpus)
        measured = contention.deltas(before, contention.read(), threads)
    if canary_s is not None:
        measured["canary_s"] = canary_s
    if job.wait:
        measured["wait"] = job.wait
    device = backend.device_memory()
    backend.close()
    overflow = {}
    if settings.allow_context_overflow:  # asked for on purpose: say by how much
        trained = trained_context(job.model.kind, job.model.path)
        if trained and task.context_tokens() > trained:
            overflow = {"context_overflow": {"needed": task.context_tokens(), "trained": trained}}
    for name, text in result.artifacts.items():
        atomic_write_text(job.artifacts_dir / name, text)
    measurements = result.measurements + [
        Measurement("load_s", info.load_s),
        Measurement("model_bytes", info.model_bytes),
        Measurement("peak_rss_mb", memory.peak_mb, memory.samples),
    ]
    derived = backend.model.quantization or {}
    measurements += [Measurement(metric, derived[key]) for metric, key in
                     (("quantize_s", "quantize_s"), ("quantize_peak_rss_mb", "peak_rss_mb")) if key in derived]
    if "peak_vram_mb" in device:
        measurements.append(Measurement("peak_vram_mb", device["peak_vram_mb"]))
    return {
        "status": OK,
        "measurements": [m.row() for m in measurements],
        "samples": result.samples,
        "resolved": {"backend": {**prepared, **info.details,
                                 "shape": info.shape.as_dict() if info.shape else info.no_shape},
                     "task": {**result.resolved, **overflow},
                     "model": backend.model.described(),
                     **({"reference": prepared_reference} if prepared_reference else {}),
                     "memory": {"rss_before_load_mb": rss_before, "rss_after_load_mb": rss_loaded,
                                "sampled_peak_mb": memory.sampled_peak / 2**20,
                                "hwm_mb": hwm_bytes() / 2**20, "ru_maxrss_mb": ru_maxrss_bytes() / 2**20, **device},
                     "where": machine(),
                     "contention": contention.judge(measured, contention.BusySettings(**job.busy),
                                                    contention.wait_reason(job.wait))},
        "fingerprints": {"model": backend.model.fingerprint(),
                         "reference": job.reference_model.fingerprint() if job.reference_model else None,
                         "dataset": corpus.fingerprint() if corpus else None},
    }


def make_backend(settings, model: ResolvedModel) -> Backend:
    return BACKENDS[settings.type](settings, model)


def main(argv: list[str]) -> int:
    job = Job.read(Path(argv[0]))
    started, started_at = time.time(), now()
    try:
        fields = run_job(job)
    except Unavailable as exc:  # this machine lacks what the cell needs: a skip, not a failure
        fields = {"status": SKIPPED, "reason": str(exc)}
    except Exception as exc:  # the cell fails, the run goes on: record why
        traceback.print_exc()
        fields = {"status": FAILED, "reason": failure_reason(exc)}
    record = CellRecord(cell_id=job.cell_id, cell=job.cell.model_dump(mode="json"), params=job.cell.params,
                        started_at=started_at, ended_at=now(), duration_s=time.time() - started, round=job.round,
                        **fields)
    try:
        atomic_write_text(job.outcome_path, json.dumps(record.to_json(), indent=1))
    except OSError as exc:  # a full disk may still hold the record without its samples: say why it failed
        print(f"harness worker: {describe_os_error(exc)}", file=sys.stderr, flush=True)
        short = CellRecord(**{**vars(record), "status": FAILED, "reason": failure_reason(exc), "measurements": [],
                              "samples": {}})
        try:
            atomic_write_text(job.outcome_path, json.dumps(short.to_json(), indent=1))
        except OSError:
            return WORKER_COULD_NOT_WRITE
    return 0


def failure_reason(exc: Exception) -> str:
    """A failed cell's reason: an environment error names the path and the cause (``disk full``), anything
    else its type and the first line of its message."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return describe_os_error(exc)
    cause = out_of_memory_cause(exc)
    if cause is not None:
        return out_of_memory_line(cause)
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}"


if __name__ == "__main__":
    from harness.core.process import drop_current_directory

    drop_current_directory()
    sys.exit(main(sys.argv[1:]))
