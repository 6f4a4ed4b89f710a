"""The Hugging Face quantization methods under ``quantize:`` (torchao, quanto, hqq): each derives a tiny Llama
once in a child process into the cache, the hf backend reloads it as a user would, and its logits equal the
in-memory quantized model's, near but not equal to the full-precision model's. Bad input is one line."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_random_llama

from harness.cli import main
from harness.sources.models import ModelSpec, resolve
from harness.sources.quantization import QuantMethod, parse_quantize

METHODS = {
    "torchao-int8": {"method": "torchao", "scheme": "int8_weight_only"},
    "torchao-int8-g64": {"method": "torchao", "scheme": "int8_weight_only", "group_size": 64},
    "torchao-dynamic": {"method": "torchao", "scheme": "int8_dynamic"},
    "torchao-int4": {"method": "torchao", "scheme": "intx_int4", "group_size": 64},
    "quanto-int8": {"method": "quanto", "weights": "int8"},
    "quanto-int4": {"method": "quanto", "weights": "int4"},
    "hqq-4": {"method": "hqq", "bits": 4, "group_size": 64},
}
PROMPT = np.array([1, 504, 3023, 282, 260, 2013, 30, 12, 411, 2800, 1435, 42, 9, 77, 4400, 31999])


@pytest.fixture(scope="module")
def one_layer_llama(smollm2_path, _isolated_cache, tmp_path_factory) -> Path:
    """A random one-layer Llama (hidden 256, intermediate 768: every group size divides its rows) with SmolLM2's
    tokenizer; one layer keeps hqq's per-layer optimization to seconds."""
    return save_random_llama(smollm2_path, tmp_path_factory.mktemp("one-layer-llama"), layers=1)


def _last_logits(model) -> np.ndarray:
    import torch

    with torch.no_grad():  # not inference_mode: quanto's int4 weights fail there (its loader works around it)
        return model(input_ids=torch.from_numpy(PROMPT[None, :])).logits[0, -1].float().numpy()


def _backend_logits(model) -> np.ndarray:
    """The last prompt position's logits through the hf backend, which loads the directory as a user would."""
    from harness.backends.hf.backend import HfBackend, HfSettings

    backend = HfBackend(HfSettings(type="hf", n_threads=2), model)
    backend.prepare()
    info = backend.load(context_tokens=64)
    try:
        return next(backend.logit_steps(PROMPT, 1)), info
    finally:
        backend.close()


@pytest.mark.hf
@pytest.mark.hfquant
@pytest.mark.quantlab
@pytest.mark.parametrize("name", METHODS)
def test_a_derived_model_reloads_with_the_logits_of_the_quantized_model_in_memory(name, one_layer_llama):
    import torch
    from transformers import AutoModelForCausalLM

    spec = ModelSpec(hf=str(one_layer_llama), quantize=METHODS[name])
    model = resolve(name, spec, Path("."))
    assert model.kind == "hf" and model.path.is_dir() and model.source.startswith(f"{one_layer_llama}#quantize=")
    record = json.loads((model.path / "quantize.json").read_text())
    assert model.quantization["cached"] is False and record["quantize_s"] > 0 and record["peak_rss_mb"] > 50
    assert model.bytes_on_disk == sum(p.stat().st_size for p in model.path.rglob("*") if p.is_file())

    reloaded, info = _backend_logits(model)
    in_memory = _last_logits(spec.quantization.quantized_model(one_layer_llama, None, 2))
    # equal up to float rounding (the backend runs the prompt over a KV cache): the saved weights are the same
    np.testing.assert_allclose(reloaded, in_memory, rtol=0, atol=1e-4)
    full = _last_logits(AutoModelForCausalLM.from_pretrained(one_layer_llama, dtype=torch.float32))
    assert np.abs(reloaded - full).max() > 1e-2  # quantized, far beyond that rounding
    cosine = reloaded @ full / np.linalg.norm(reloaded) / np.linalg.norm(full)
    assert cosine > 0.9, cosine  # quantized, not broken
    assert info.details["architecture"] == "LlamaForCausalLM"
    from harness.backends.hf.backend import weight_bytes

    linear = 786_432 * 4  # the fp32 bytes of the decoder's linear layers, what the methods quantize
    full_bytes = weight_bytes(AutoModelForCausalLM.from_pretrained(one_layer_llama, dtype=torch.float32))
    untied = 49152 * 256 * 4 if name.startswith("hqq") else 0  # hqq's loader does not tie the head again
    assert info.model_bytes - untied < full_bytes - linear / 2  # the quantized tensors' real bytes, not fp32's

    again = resolve(name, spec, Path("."))
    assert again.path == model.path and again.quantization["cached"] is True
    assert again.quantization["quantize_s"] == record["quantize_s"]


@pytest.mark.hf
@pytest.mark.hfquant
@pytest.mark.quantlab
def test_the_embedding_and_output_head_stay_unquantized_and_int8_halves_the_linear_bytes(one_layer_llama):
    """One policy for every method: the linear layers of the decoder are quantized, the embedding (tied to the
    output head) is not; torchao's int4 is stored unpacked in int8, as large as int8 (its real bytes)."""
    from safetensors import safe_open

    def weights(name) -> int:
        quantize = METHODS.get(name)
        return (resolve(name, ModelSpec(hf=str(one_layer_llama), quantize=quantize), Path(".")).path
                / "model.safetensors").stat().st_size

    embedding = 49152 * 256 * 4
    linear = weights("full") - embedding
    assert 0.25 * linear < weights("torchao-int8") - embedding < 0.3 * linear  # a byte a weight, a scale a row
    assert weights("torchao-int4") >= weights("torchao-int8")
    int8 = resolve("i8", ModelSpec(hf=str(one_layer_llama), quantize=METHODS["torchao-int8"]), Path("."))
    with safe_open(int8.path / "model.safetensors", "pt") as weights:
        assert weights.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
    quanto = resolve("q", ModelSpec(hf=str(one_layer_llama), quantize=METHODS["quanto-int8"]), Path("."))
    with safe_open(quanto.path / "model.safetensors", "pt") as weights:
        assert weights.get_slice("model.embed_tokens.weight").get_dtype() == "F32"
        assert not any(k.startswith("lm_head") and "scale" in k for k in weights.keys())


@pytest.mark.hf
@pytest.mark.hfquant
def test_a_suite_cell_of_a_derived_model_reports_its_quantize_cost(one_layer_llama, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "hfquant", "models": {"q8": {"hf": str(one_layer_llama), "quantize": METHODS["torchao-int8"]}},
        "backends": {"hf": {"type": "hf", "n_threads": 2}},
        "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 64, "max_tokens": 128}},
        "matrix": [{"model": "q8", "backend": "hf", "task": "ppl"}]}))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    record = json.loads(next((out / "cells").glob("*.json")).read_text())
    assert record["status"] == "ok", record
    metrics = {m["metric"]: m["value"] for m in record["measurements"]}
    derived = record["fingerprints"]["model"]["quantization"]
    assert metrics["quantize_s"] == derived["quantize_s"] and metrics["quantize_peak_rss_mb"] == derived["peak_rss_mb"]
    assert derived["cached"] in (True, False) and derived["path"] == record["fingerprints"]["model"]["path"]


@pytest.mark.hf
@pytest.mark.hfquant
def test_a_method_that_fails_in_its_library_fails_its_cells_and_the_others_run(one_layer_llama, tmp_path, capsys):
    """torchao cannot group 256-wide rows by 48: the library raises in the derivation's child. That model's cells
    fail with the reason (the child's output kept in a file), the other model's cell runs, no traceback shown."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "lab", "models": {
            "bad": {"hf": str(one_layer_llama),
                    "quantize": {"method": "torchao", "scheme": "intx_int4", "group_size": 48}},
            "good": {"hf": str(one_layer_llama), "quantize": METHODS["torchao-int8"]}},
        "backends": {"hf": {"type": "hf", "n_threads": 2}},
        "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 64, "max_tokens": 128}},
        "matrix": [{"model": ["bad", "good"], "backend": "hf", "task": "ppl"}]}))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 3
    records = {r["cell"]["model"]: r for r in map(json.loads, map(Path.read_text, (out / "cells").glob("*.json")))}
    assert records["good"]["status"] == "ok"
    reason = records["bad"]["reason"]
    assert records["bad"]["status"] == "failed" and "(torchao:scheme=intx_int4,group_size=48) failed" in reason
    kept = Path(reason.rsplit("its output is in ", 1)[1].rstrip(")"))
    assert "Traceback" in kept.read_text()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "models.bad: quantizing" in err


def _one_line_error(capsys, tmp_path, quantize, monkeypatch=None) -> str:
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "bad", "models": {"m": {"hf": str(tmp_path), "quantize": quantize}},
        "backends": {"hf": {"type": "hf"}}, "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 64}},
        "matrix": [{"model": "m", "backend": "hf", "task": "ppl"}]}))
    assert main(["validate", str(suite)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.hf
def test_an_unknown_method_or_key_is_one_line_with_a_suggestion(tmp_path, capsys):
    err = _one_line_error(capsys, tmp_path, {"method": "torchoa", "scheme": "int8_weight_only"})
    assert "models.m.quantize" in err and "'torchoa'" in err and "did you mean 'torchao'" in err
    err = _one_line_error(capsys, tmp_path, {"method": "torchao", "scheme": "int8_weight_only", "bits": 4})
    assert "bits: unknown key for method torchao (a key of method awq, gptq, hqq)" in err
    err = _one_line_error(capsys, tmp_path, {"method": "hqq", "group_sise": 64})
    assert "did you mean 'group_size'" in err
    err = _one_line_error(capsys, tmp_path, {"method": "quanto", "weights": "int3"})
    assert "weights" in err and "int8" in err


@pytest.mark.hf
def test_a_missing_quantization_library_is_a_warning_naming_its_extra(tmp_path, capsys, monkeypatch):
    """validate passes: the model's cells are skipped with the reason (tests/test_gptq_awq.py runs such a suite)."""
    monkeypatch.setitem(sys.modules, "hqq", None)  # as if not installed
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "lab", "models": {"m": {"hf": str(tmp_path), "quantize": {"method": "hqq"}}},
        "backends": {"hf": {"type": "hf"}}, "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 64}},
        "matrix": [{"model": "m", "backend": "hf", "task": "ppl"}]}))
    assert main(["validate", str(suite)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"harness: warning: {suite}: models.m.quantize: ") and len(err.splitlines()) == 1, err
    assert "'hqq'" in err and "pip install 'harness[hfquant]'" in err and err.endswith("the cells of 'm' are skipped")


def test_every_method_is_registered_under_its_name_and_parsed_from_a_mapping():
    assert {"gguf", "torchao", "quanto", "hqq"} <= set(QuantMethod.registry)
    assert parse_quantize("Q4_K_M") == "Q4_K_M"  # the GGUF shorthand stays a string: cell ids as they were
    hqq = parse_quantize({"method": "hqq"})
    assert (hqq.bits, hqq.group_size, hqq.label) == (4, 64, "hqq:bits=4,group_size=64")
    assert ModelSpec(hf="x", quantize={"method": "quanto", "weights": "int4"}).kind == "hf"
    assert ModelSpec(train={"dataset": "d", "tokenizer": "t.gguf", "tokens": 10}, quantize="Q4_K_M").kind == "gguf"
