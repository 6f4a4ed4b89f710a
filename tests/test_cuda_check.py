"""benchmarks/cuda_check.py's pieces that need no GPU: the model's parts joined and checked, the token file,
the slimmed bitsandbytes wheel, the weight arithmetic and the expectation checks on a results table."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import re
import zipfile

import pytest
from conftest import REPO

from harness.core.metrics import Measurement
from harness.results.records import CellRecord
from harness.results.store import results_frame

_spec = importlib.util.spec_from_file_location("cuda_check", REPO / "benchmarks" / "cuda_check.py")
cuda_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_check)

#: SmolLM2-135M's config.json as the GGUF's HF directory has it (the keys the arithmetic reads)
SMOLLM2 = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}


def test_parts_join_to_the_checked_file(tmp_path):
    data = bytes(range(256)) * 40 + b"tail"
    whole = tmp_path / "model.gguf"
    whole.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    parts = cuda_check.split_file(whole, [tmp_path / "1", tmp_path / "2"])
    assert [p.name for p in parts] == ["model.gguf.part1", "model.gguf.part2"]
    joined = cuda_check.join_parts(parts, tmp_path / "work" / "joined.gguf", digest)
    assert joined.read_bytes() == data
    assert cuda_check.join_parts([whole], tmp_path / "unused", digest) == whole
    for wrong in (parts[::-1], parts[:1]):
        with pytest.raises(SystemExit) as exc:
            cuda_check.join_parts(wrong, tmp_path / "work" / "bad.gguf", digest)
        assert exc.value.code == 2
    with pytest.raises(SystemExit):
        cuda_check.join_parts([tmp_path / "missing.part1"], tmp_path / "x", digest)


def test_token_prefix_ends_the_line_of_the_last_token():
    """Each word with the whitespace before it is a token: 3 tokens end inside line 2, so the prefix is lines 1-2."""
    pieces: list[bytes] = []

    def encode(text):
        ids = []
        for piece in re.findall(r"\s*\S+|\s+$", text):
            if piece.encode() not in pieces:
                pieces.append(piece.encode())
            ids.append(pieces.index(piece.encode()))
        return ids

    raw = b"aa bb\ncc dd\nee\n"
    assert cuda_check.tokens_prefix(raw, encode, pieces.__getitem__, n_tokens=3) == b"aa bb\ncc dd\n"
    assert cuda_check.tokens_prefix(raw, encode, pieces.__getitem__, n_tokens=6) == raw
    with pytest.raises(ValueError, match="fewer than 7"):
        cuda_check.tokens_prefix(raw, encode, pieces.__getitem__, n_tokens=7)


@pytest.mark.gguf
@pytest.mark.models
def test_token_file_holds_the_first_8192_tokens(smollm2_path, corpora_dir, tmp_path):
    """The file is WikiText-2 raw test's first 35,825 bytes and llama.cpp reads the text's first 8,192 tokens from
    it (``prepare`` also checks transformers' tokenizer of the GGUF, which takes half a minute to build)."""
    made = cuda_check.make_tokens_file(smollm2_path, corpora_dir / "wikitext-2-raw" / "wiki.test.raw",
                                       tmp_path / cuda_check.TOKENS_NAME, check_transformers=False)
    assert made["sha256"] == cuda_check.TOKENS_SHA256 and made["bytes"] == 35825
    assert (tmp_path / cuda_check.TOKENS_NAME).read_bytes() == (
        corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_bytes()[:35825]
    assert made["checked_with"] == ["llama.cpp"]


def test_slim_wheel_keeps_the_cuda13_and_cpu_libraries(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = ["bitsandbytes/__init__.py"] + [f"bitsandbytes/libbitsandbytes_{b}.so" for b in
                                            ("cpu", "cuda118", "cuda128", "cuda130", "cuda132", "rocm72", "xpu2026")]
    record = "".join(f"{n},sha256=x,1\n" for n in names) + "bitsandbytes-0.50.2.dist-info/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name in names:
            zf.writestr(name, b"\0" * 1000)
        zf.writestr("bitsandbytes-0.50.2.dist-info/RECORD", record)
    cuda_check.slim_wheel(wheel, cuda_check.BNB_KEEP)
    with zipfile.ZipFile(wheel) as zf:
        kept = sorted(n for n in zf.namelist() if n.endswith(".so"))
        listed = [line.split(",")[0] for line in zf.read("bitsandbytes-0.50.2.dist-info/RECORD").decode().splitlines()]
    assert kept == [f"bitsandbytes/libbitsandbytes_{b}.so" for b in ("cpu", "cuda130", "cuda132")]
    assert [n for n in listed if n.endswith(".so")] == kept and "bitsandbytes/__init__.py" in listed


def test_weight_arithmetic_reproduces_the_measured_figures():
    """fp32 and bf16 match the model bytes measured in docs/measurements.md less transformers' 256 bytes of
    rotary buffers; 4-bit with and without double quantization, and int8, against fp16."""
    size = {v: cuda_check.expected_weight_bytes(SMOLLM2, v) for v in cuda_check.VARIANTS}
    assert size["fp32"] == 538_060_288 - 256 and size["bf16"] == size["fp16"] == 269_030_272 - 256
    assert size["nf4"] == size["fp4"] and size["nf4-dq"] == size["fp4-dq"]
    ratio = {v: size[v] / size["fp16"] for v in cuda_check.QUANTIZED}
    assert ratio["nf4"] == pytest.approx(0.4328, abs=1e-4) and ratio["nf4-dq"] == pytest.approx(0.4152, abs=1e-4)
    assert ratio["int8"] == pytest.approx(0.6077, abs=1e-4)


def _frame(device="cuda", ppl=None, nvml=1000.0, vram=800.0, failed=()):
    """A results table as `harness run` writes it, for suites/cuda.yaml's cells."""
    ppl = {"fp32": 29.24, "fp16": 29.25, "bf16": 29.30, "nf4": 37.0, "nf4-dq": 37.1, "fp4": 43.2, "fp4-dq": 43.3,
           "int8": 29.8, **(ppl or {})}
    size = {v: cuda_check.expected_weight_bytes(SMOLLM2, v) + 256 for v in cuda_check.VARIANTS}
    records = []
    for backend in cuda_check.VARIANTS:
        for task in ("ppl", "speed") + (("speed-b8", "speed-b32") if backend == "fp16" else ()):
            memory = {"peak_vram_mb": vram, "nvml_process_mb": nvml} if device == "cuda" else {}
            m = [Measurement("model_bytes", size[backend])]
            m += [Measurement("peak_vram_mb", vram)] if device == "cuda" else []
            m += ([Measurement("token_ppl", ppl[backend]), Measurement("tokens_scored", 4080)] if task == "ppl"
                  else [Measurement("decode_tok_s", 100.0 * (1 + 7 * task.endswith("b8") + 30 * task.endswith("b32")))])
            ok = (backend, task) not in failed
            records.append(CellRecord(**{"cell_id": f"{backend}-{task}", "status": "ok" if ok else "failed",
                            "reason": None if ok else "RuntimeError: boom",
                            "cell": {"suite": "cuda", "model": "smollm2-135m", "backend": backend, "task": task,
                                     "dataset": "wiki"},
                            "params": {}, "resolved": {"memory": memory, "backend": {"hf_dir": None}},
                            "measurements": [x.row() for x in m] if ok else []}))
    return results_frame(records, "r1")


REFERENCE = {"tokens_scored": 4080, "token_ppl": {"fp32": 29.24, "nf4": 37.05, "nf4-dq": 37.2, "fp4": 43.19,
                                                  "fp4-dq": 43.0, "int8": 29.81}}
PARITY = {"rounds": 5, "median": {"harness": 97.0, "bare": 100.0, "bare_synced": 99.0}}


def _statuses(frame, **kwargs):
    options = {"device": "cuda", "parity": PARITY, "reference": REFERENCE, "config": SMOLLM2, **kwargs}
    return {c["check"]: c["status"] for c in cuda_check.run_checks(frame, **options)}


def test_checks_pass_on_a_run_that_meets_every_expectation():
    status = _statuses(_frame())
    assert {s for s in status.values()} == {"pass", "info"}
    assert {"fp16 ppl vs cuda fp32", "bf16 ppl vs CPU fp32", "fp4-dq ppl vs CPU fp4-dq", "nf4-dq/fp16 weight bytes",
            "peak_vram_mb <= NVML per process", "fp16 decode: harness vs bare generate"} <= set(status)


def test_checks_fail_where_an_expectation_is_missed():
    assert _statuses(_frame(ppl={"fp16": 29.24 * 1.006}))["fp16 ppl vs cuda fp32"] == "fail"
    assert _statuses(_frame(ppl={"int8": 29.81 * 1.02}))["int8 ppl vs CPU int8"] == "fail"
    assert _statuses(_frame(vram=1200.0))["peak_vram_mb <= NVML per process"] == "fail"
    slow = {"rounds": 5, "median": {"harness": 85.0, "bare": 100.0, "bare_synced": 99.0}}
    assert _statuses(_frame(), parity=slow)["fp16 decode: harness vs bare generate"] == "fail"
    failed = _statuses(_frame(failed={("int8", "speed")}))
    assert failed["every cell ran"] == "fail"


def test_checks_say_unknown_or_not_applicable_rather_than_pass():
    assert _statuses(_frame(nvml=None))["peak_vram_mb <= NVML per process"] == "unknown"
    cpu = _statuses(_frame(device="cpu"), device="cpu")
    assert cpu["peak_vram_mb <= NVML per process"] == "n/a" and cpu["fp16 ppl vs cpu fp32"] == "pass"
    shorter = _statuses(_frame(), reference={**REFERENCE, "tokens_scored": 1020})
    assert shorter["ppl vs CPU reference"] == "n/a" and "fp16 ppl vs CPU fp32" not in shorter
    assert _statuses(_frame(), parity=None)["fp16 decode: harness vs bare generate"] == "unknown"
    assert _statuses(_frame(), config=None)["nf4/fp16 weight bytes"] == "unknown"


def test_report_is_written_from_a_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _frame().to_parquet(run_dir / "results.parquet")
    parity = tmp_path / "parity.json"
    parity.write_text(json.dumps({**PARITY, "device": "cuda:0", "prompt_tokens": 512, "new_tokens": 128,
                                  **{k: [1.0] for k in ("harness_decode_tok_s", "bare_decode_tok_s",
                                                        "bare_synced_decode_tok_s")}}))
    out = tmp_path / "out"
    out.mkdir()
    cuda_check.write_report(run_dir, parity, {"device": "cuda", "versions": {"torch": "2.11.0"}}, out)
    report = json.loads((out / "check.json").read_text())
    assert report["parity"]["median"]["bare"] == 100.0 and report["environment"]["versions"]["torch"] == "2.11.0"
    assert "| fp16 | speed-b32 | ok |" in (out / "check.md").read_text()
    assert (out / "run.tar.gz").stat().st_size > 0


def test_overrides_make_the_dry_run_variant_of_the_suite(tmp_path):
    """The --set values run() passes name keys suites/cuda.yaml has: every backend on cpu, smaller cells."""
    from harness.suite.parse import parse_suite

    args = argparse.Namespace(max_tokens=1024, device="cpu", speed="32,4,2")
    sets = cuda_check.suite_overrides(tmp_path / "m.gguf", tmp_path / "t.txt", args)
    suite, _ = parse_suite(cuda_check.SUITE, sets)
    assert set(suite.backends) == set(cuda_check.VARIANTS)
    assert {b.device for b in suite.backends.values()} == {"cpu"}
    assert suite.tasks["ppl"].max_tokens == 1024 and suite.datasets["wiki"].source == f"file:{tmp_path / 't.txt'}"
    assert [(t.prompt_tokens, t.new_tokens, t.repeats, t.batch_size) for t in
            (suite.tasks[n] for n in cuda_check.SPEED_TASKS)] == [(32, 4, 2, 1), (32, 4, 2, 8), (32, 4, 2, 32)]
    plain, _ = parse_suite(cuda_check.SUITE, cuda_check.suite_overrides(
        tmp_path / "m.gguf", tmp_path / "t.txt", argparse.Namespace(max_tokens=8192, device="cuda", speed=None)))
    assert {b.device for b in plain.backends.values()} == {"cuda"} and plain.tasks["speed"].new_tokens == 128
