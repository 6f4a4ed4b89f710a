"""MBU/MFU arithmetic: bytes per decoded token and prefill FLOPs on a tiny config worked by hand, the
throughput task's roofline figures against a probe given in code, and every generating backend's shape."""

import json

import pytest
from conftest import SMOLLM2_PKG
from tiny_backend import UnigramBackend

from harness.core.roofline import (
    ModelShape,
    decode_bytes_per_token,
    kv_bytes_per_position,
    mean_decode_depth,
    prefill_flops,
)
from harness.core.types import LoadInfo
from harness.tasks import METRICS
from harness.tasks.throughput import ROOFLINE, ThroughputSettings, ThroughputTask
from suites import run_suite

#: 2 layers, 4 query heads sharing 2 KV heads of dim 8, fp16 KV: 2*2*8*2*2 = 128 bytes per position
TINY = ModelShape(n_params=1000, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, kv_dtype_bytes=2,
                  compute_dtype="fp32")
PROBS = {"a": 0.5, "b": 0.25, "c": 0.125, " ": 0.125}


def test_bytes_per_token_by_hand():
    assert kv_bytes_per_position(TINY) == 128
    # prompt 10, 6 new: decode steps attend to 11..15 positions, mean 13
    assert mean_decode_depth(10, 6) == 13
    assert decode_bytes_per_token(4000, TINY, 13) == 4000 + 128 * 13
    # a batch of 4 shares one pass over the weights, each sequence reads its own cache
    assert decode_bytes_per_token(4000, TINY, 13, batch_size=4) == 4000 / 4 + 128 * 13


def test_prefill_flops_by_hand():
    # matmuls 2*1000*3; attention: positions 1+2+3 = 6 keys, 4 FLOPs per key per head-dim per head per layer
    assert prefill_flops(TINY, 3) == 2 * 1000 * 3 + 2 * 4 * 8 * 4 * 6


def probe_of(gb_s: float, fp32_flop_s: float) -> dict:
    return {"cpu": {"memory_read": {"gb_s": gb_s}, "gemm_flop_s": {"fp32": fp32_flop_s}}}


def run_task(shape, machine, **details):
    task = ThroughputTask(ThroughputSettings(type="throughput", prompt_tokens=10, new_tokens=6, repeats=2,
                                             warmup=0))
    task.loaded = LoadInfo(load_s=0.0, model_bytes=4000, details={"n_threads": 2, **details}, shape=shape,
                           no_shape="no layers here")
    task.machine = machine
    result = task.run(UnigramBackend(PROBS, bos=True), None)
    return {m.metric: m.value for m in result.measurements}, result


def test_throughput_cell_reports_bandwidth_and_flops_against_the_probe():
    m, result = run_task(TINY, {"2": probe_of(0.001, 1e6)})
    # the tiny backend's clock: 1 ms per prompt token, 50 ms per decoded token
    per_token = 4000 + 128 * 13
    assert m["decode_bytes_per_token"] == per_token
    assert m["decode_gb_s"] == pytest.approx(20 * per_token / 1e9)
    assert m["mbu"] == pytest.approx(20 * per_token / 1e6)
    flops = 2 * 1000 * 10 + 2 * 2 * 4 * 8 * 10 * 11
    assert m["prefill_flop_s"] == pytest.approx(1000 * flops / 10)
    assert m["mfu"] == pytest.approx(1000 * flops / 10 / 1e6)
    assert len(result.samples["mbu"]) == 2 and "not_measured" not in result.resolved


def test_without_a_shape_or_a_probe_the_figures_are_not_measured_with_the_reason():
    m, result = run_task(None, {"2": probe_of(1.0, 1.0)})
    assert not set(ROOFLINE) & set(m) and result.resolved["not_measured"]["mbu"] == "no layers here"
    m, result = run_task(TINY, None)
    assert "decode_gb_s" in m and "mbu" not in m and "probe: false" in result.resolved["not_measured"]["mfu"]
    m, result = run_task(TINY, {"4": probe_of(1.0, 1.0)})
    assert "mbu" not in m and result.resolved["not_measured"]["mbu"] == "no probe of cpu with 2 threads"


def test_roofline_metrics_are_registered_with_directions():
    assert {name: METRICS[name].higher_is_better for name in ROOFLINE} == {
        "decode_bytes_per_token": False, "decode_gb_s": True, "mbu": True, "prefill_flop_s": True, "mfu": True}


@pytest.mark.gguf
@pytest.mark.models
def test_smollm2_shape_from_llamacpp(smollm2_model):
    """llama.cpp's metadata agrees with SmolLM2-135M's config (the file's, read for gpt4all: test_gpt4all)."""
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings

    backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=1), smollm2_model)
    shape = backend.load(64).shape
    backend.close()
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim) == (30, 9, 3, 64)
    assert shape.n_params == pytest.approx(134.5e6, rel=0.01)
    assert (shape.kv_dtype_bytes, shape.compute_dtype) == (2, "fp32")


@pytest.mark.hf
def test_hf_shape_of_a_tiny_llama_built_in_code():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from harness.backends.hf.backend import hf_shape

    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    shape = hf_shape(model, torch.bfloat16)
    assert shape == ModelShape(n_params=model.num_parameters(), n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                               kv_dtype_bytes=2, compute_dtype="bf16")


@pytest.mark.integration
def test_a_run_probes_once_and_every_generating_backend_reports_its_rows(tmp_path, small_probe):
    """llama.cpp gains MBU/MFU against the run's probe (stored in run.json); the n-gram lists them as not
    measured with the reason."""
    ngram = {"order": 2, "unit": "word", "train": "builtin:stdlib-docs#train"}
    suite = {"name": "mbu", "models": {"m": {"gguf": SMOLLM2_PKG}, "ng": {"ngram": ngram}},
             "backends": {"cpu": {"type": "llamacpp", "n_threads": 2}, "ngram": {"type": "ngram"}},
             "tasks": {"speed": {"type": "throughput", "prompt_tokens": 32, "new_tokens": 4, "repeats": 2,
                                 "warmup": 0}},
             "matrix": [{"model": "m", "backend": "cpu", "task": "speed"},
                        {"model": "ng", "backend": "ngram", "task": "speed"}]}
    out, table = run_suite(tmp_path, suite)
    probe = json.loads((out / "run.json").read_text())["environment"]["probe"]["2"]
    assert probe["measured_at"] == small_probe["measured_at"] and probe["cpu"]["memory_read"]["method"]
    llama = table[table.backend == "cpu"].set_index("metric")
    bandwidth = probe["cpu"]["memory_read"]["gb_s"]
    assert llama.loc["mbu", "value"] == pytest.approx(llama.loc["decode_gb_s", "value"] / bandwidth, rel=1e-6)
    assert llama.loc["decode_bytes_per_token", "value"] > llama.loc["model_bytes", "value"]
    assert llama.loc["mfu", "n"] == 2 and llama.loc["mfu", "higher_is_better"]
    ngram = table[table.backend == "ngram"]
    assert not set(ROOFLINE) & set(ngram.metric)
    resolved = json.loads(ngram.params.iloc[0])["resolved"]
    assert resolved["task"]["not_measured"]["mbu"] == "an n-gram model has no layers, matmuls or KV cache"
