"""Runs one cell in a process of its own: ``python -m harness.worker JOB.json``.

A fresh process per cell makes load time cold, peak RSS the cell's own, and a crash (a segfault in
native code, an out-of-memory kill) the cell's alone. The record is written atomically at the end; a
process that dies before that leaves no record, which the runner reports as a crash.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from harness.atomic import atomic_write_text
from harness.backends import BACKENDS
from harness.data import DatasetSpec, load_corpus
from harness.errors import Unavailable
from harness.measure import PeakRSS, rss_mb, ru_maxrss_bytes
from harness.metrics import Measurement
from harness.models import ResolvedModel
from harness.results import FAILED, OK, SKIPPED, artifact_path, write_cell_record
from harness.suite import Cell
from harness.tasks import TASKS


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_job(job: dict) -> dict:
    """Load the backend, run the task, return the cell's record (status ok)."""
    cell = Cell.model_validate(job["cell"])
    task_cls = TASKS[cell.task_spec["type"]]
    reference, prepared_reference = None, {}
    if cell.reference:
        reference = make_backend(cell.reference["backend_spec"], job["reference_model"])
        prepared_reference = reference.prepare()
    task = task_cls(task_cls.settings_class.model_validate(cell.task_spec), reference)
    corpus = None
    if cell.dataset is not None:
        corpus = load_corpus(cell.dataset, DatasetSpec.model_validate(cell.dataset_spec),
                             Path(job["base_dir"]), Path(job["corpora"]) if job.get("corpora") else None)
    backend = make_backend(cell.backend_spec, job["model"])
    model = backend.model
    prepared = backend.prepare()
    with PeakRSS() as memory:
        rss_before = rss_mb()
        info = backend.load(task.context_tokens())
        rss_loaded = rss_mb()
        result = task.run(backend, corpus)
    device = backend.device_memory()
    backend.close()
    for name, text in result.artifacts.items():
        atomic_write_text(artifact_path(Path(job["run_dir"]), job["cell_id"], name), text)
    measurements = result.measurements + [
        Measurement("load_s", info.load_s),
        Measurement("model_bytes", info.model_bytes),
        Measurement("peak_rss_mb", memory.peak_mb, memory.samples),
    ]
    if "peak_vram_mb" in device:
        measurements.append(Measurement("peak_vram_mb", device["peak_vram_mb"]))
    return {
        "status": OK, "reason": None,
        "measurements": [m.row() for m in measurements],
        "samples": result.samples,
        "resolved": {"backend": {**prepared, **info.details}, "task": result.resolved,
                     **({"reference": prepared_reference} if prepared_reference else {}),
                     "memory": {"rss_before_load_mb": rss_before, "rss_after_load_mb": rss_loaded,
                                "sampled_peak_mb": memory.sampled_peak / 2**20,
                                "ru_maxrss_mb": ru_maxrss_bytes() / 2**20, **device}},
        "fingerprints": {"model": model.fingerprint(), "dataset": corpus.fingerprint() if corpus else None},
    }


def make_backend(backend_spec: dict, model_job: dict):
    backend_cls = BACKENDS[backend_spec["type"]]
    model = ResolvedModel(**{**model_job, "path": Path(model_job["path"])})
    return backend_cls(backend_cls.settings_class.model_validate(backend_spec), model)


def main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    started = time.time()
    base = {"cell_id": job["cell_id"], "cell": job["cell"], "params": job["params"], "started_at": now()}
    if job.get("round") is not None:
        base["round"] = job["round"]
    try:
        record = run_job(job)
    except Unavailable as exc:  # this machine lacks what the cell needs: a skip, not a failure
        record = {"status": SKIPPED, "reason": str(exc), "measurements": []}
    except Exception as exc:  # the cell fails, the run goes on: record why
        traceback.print_exc()
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        record = {"status": FAILED, "reason": f"{type(exc).__name__}: {first_line}", "measurements": []}
    record.update(base, ended_at=now(), duration_s=time.time() - started)
    write_cell_record(Path(job["run_dir"]), record)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
