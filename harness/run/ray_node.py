"""The node side of the Ray executor: the Ray task that starts a job's worker process on its node, in a
temporary folder, with the texts the driver shipped and the job's models located again (checked against
the driver's sha256), and hands back what the worker wrote."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from harness.core.errors import UserError, located
from harness.core.files import scratch_dir
from harness.results.environment import machine
from harness.run.executor import read_outcome
from harness.run.job import Job
from harness.sources.fingerprint import sha256_bytes
from harness.sources.models import ModelSpec, ResolvedModel, resolve, resolve_ngram, resolve_trained


def run_on_node(job_data: dict, texts: dict, specs: dict, timeout_s: float, code: str):
    """The Ray task of one job: report where it runs, then run the worker process here and report how it
    ended (its record, log and artifacts)."""
    import ray

    where = {**machine(), "ray_node_id": ray.get_runtime_context().get_node_id()}
    yield {"kind": "started", "where": where}
    with scratch_dir("harness-cell-") as tmp:  # a cancelled task's folder goes with the next task here
        yield run_here(Job.from_json(job_data), {s: ray.get(ref) for s, ref in texts.items()}, specs, timeout_s,
                       code, tmp, where["hostname"])


@functools.cache
def code_fingerprint() -> str:
    """sha256 of the harness's own source files: a node must run the code the driver runs."""
    root = Path(__file__).resolve().parent.parent
    lines = [f"{p.relative_to(root).as_posix()} {sha256_bytes(p.read_bytes())}" for p in sorted(root.rglob("*.py"))]
    return sha256_bytes("\n".join(lines).encode())


def run_here(job: Job, texts: dict[str, bytes], specs: dict, timeout_s: float, code: str, tmp: Path,
             hostname: str) -> dict:
    """The job's worker process in ``tmp``, with the texts shipped and the models found on this machine."""
    report = {"kind": "ended", "record": None, "artifacts": {}, "log": "", "returncode": None, "timed_out": False,
              "duration_s": None, "error": None, "where": {}}
    if code_fingerprint() != code:
        return {**report, "error": f"on {hostname}: the harness code differs from the driver's (sha256 "
                f"{code_fingerprint()[:12]}… here, {code[:12]}… there): install the same harness on every node"}
    files = {}
    for i, (source, text) in enumerate(sorted(texts.items())):
        files[source] = tmp / "texts" / f"{i}.txt"
        files[source].parent.mkdir(exist_ok=True)
        files[source].write_bytes(text)
    try:
        job = replace(job, model=relocate(job.model, specs, job, hostname),
                      reference_model=relocate(job.reference_model, specs, job, hostname),
                      outcome_path=tmp / "outcome.json", artifacts_dir=tmp / "artifacts", texts=files)
    except UserError as exc:
        return {**report, "error": str(exc)}
    job_path, log_path = tmp / "job.json", tmp / "worker.log"
    job.write(job_path)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # Ray's, not the backend's setting
    started = time.time()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.run.worker", str(job_path)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp, env=env,
                                start_new_session=True, preexec_fn=die_with(os.getpid()))
    try:
        returncode, timed_out = proc.wait(timeout=timeout_s), False
    except subprocess.TimeoutExpired:
        returncode, timed_out = None, True
    finally:
        if proc.poll() is None:  # timed out, or this task is being cancelled
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
    ended = time.time()
    outcome = read_outcome(job)
    record, artifacts = (outcome[0].to_json(), outcome[1]) if outcome else (None, {})
    return {**report, "record": record, "artifacts": artifacts, "log": log_path.read_text(errors="replace"),
            "returncode": returncode, "timed_out": timed_out, "duration_s": ended - started,
            "where": {"process_started_at": _iso(started), "process_ended_at": _iso(ended)}}


def relocate(model: ResolvedModel | None, specs: dict, job: Job, hostname: str) -> ResolvedModel | None:
    """The driver's model as found on this machine (its path here), refused when its sha256 differs."""
    if model is None:
        return None
    spec, base_dir = ModelSpec.model_validate(specs[model.name]), job.base_dir
    with located(f"on {hostname}", f"models.{model.name}"):
        if model.kind == "ngram":
            tokenizer_name = spec.ngram.tokenizer
            tokenizer = (resolve(tokenizer_name, ModelSpec.model_validate(specs[tokenizer_name]), base_dir)
                         if tokenizer_name else None)
            here = resolve_ngram(model.name, spec, model.recipe["train"], base_dir, job.corpora, tokenizer)
        elif spec.source_kind == "train":  # trained by the driver: a node uses its own cache's copy, never trains
            here = resolve_trained(model.name, spec, model.training["texts"], base_dir, job.corpora, train=False)
        else:
            here = resolve(model.name, spec, base_dir)
        if here.sha256 != model.sha256:
            raise UserError(f"sha256 {here.sha256[:12]}… of {here.path}, not the driver's {model.sha256[:12]}…: "
                            "every node must have the same model files")
    return here


def die_with(parent: int):
    """A ``preexec_fn`` that has the kernel kill the child when ``parent`` (the Ray worker running the task)
    dies, however it dies: a cancelled or killed task leaves no worker process behind (Linux)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "prctl"):
        return None
    pr_set_pdeathsig = 1

    def preexec():
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # it died before the line above
            os._exit(1)

    return preexec


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="microseconds")
