"""The hf backend on the real SmolLM2 GGUF: materialized once into an HF directory, it tokenizes and
scores like the llamacpp backend on the same weights."""

import math
from pathlib import Path

import numpy as np
import pytest

from harness.models import ModelSpec, resolve
from harness.windows import chunked

pytestmark = pytest.mark.integration
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_fp32(smollm2_model):
    from harness.backends.hf import HfBackend, HfSettings

    backend = HfBackend(HfSettings(type="hf", dtype="float32", n_threads=2), smollm2_model)
    prepared = backend.prepare()
    backend.load(context_tokens=256)
    yield backend, prepared
    backend.close()


@pytest.fixture(scope="module")
def llamacpp(smollm2_model):
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), smollm2_model)
    backend.load(context_tokens=256)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def text(corpora_dir):
    return (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_bytes().decode()[:20000]


def test_gguf_is_materialized_once_as_a_plain_hf_directory(hf_fp32, smollm2_model):
    from harness.backends.hf import HfBackend, HfSettings

    _, prepared = hf_fp32
    hf_dir = prepared["hf_dir"]
    config = (Path(hf_dir) / "config.json").read_text()
    assert "quantization_config" not in config  # loads as a plain model, so bitsandbytes can quantize it
    again = HfBackend(HfSettings(type="hf"), smollm2_model).prepare()
    assert again == {"hf_dir": hf_dir, "materialize_s": 0.0}


def test_same_tokens_as_llama_cpp(hf_fp32, llamacpp, text):
    hf, _ = hf_fp32
    np.testing.assert_array_equal(hf.tokenizer.encode(text), llamacpp.tokenizer.encode(text))
    assert hf.tokenizer.add_bos == llamacpp.tokenizer.add_bos
    ids = hf.tokenizer.encode(text)
    np.testing.assert_array_equal(hf.tokenizer.byte_counts(text, ids), llamacpp.tokenizer.byte_counts(text, ids))


def _ppl(backend, windows):
    return math.exp(-np.concatenate(backend.score(windows)).mean())


def test_dequantized_fp32_agrees_with_llama_cpp_on_equal_weights(hf_fp32, llamacpp, text, tmp_path):
    """hf fp32 holds the Q4_1 blocks dequantized. llama.cpp given those same weights as an F32 GGUF
    agrees to 0.05%; on the Q4_1 file itself it differs by about 0.6%, because its quantized matmuls
    round the activations to 8 bits (Q4_1 x Q8_1 dot products) - arithmetic, not weights."""
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings
    from harness.gguf_rewrite import rewrite_gguf

    hf, _ = hf_fp32
    windows = chunked(llamacpp.tokenizer.encode(text), 256, llamacpp.tokenizer.bos_id)[:8]
    f32_path = rewrite_gguf(llamacpp.model.path, tmp_path / "smollm2-f32.gguf", dequantize_to="f32")
    f32 = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2),
                          resolve("smollm2-f32", ModelSpec(gguf=str(f32_path)), tmp_path))
    f32.load(context_tokens=256)
    hf_ppl, f32_ppl, q41_ppl = _ppl(hf, windows), _ppl(f32, windows), _ppl(llamacpp, windows)
    f32.close()
    assert hf_ppl == pytest.approx(f32_ppl, rel=5e-4)
    assert hf_ppl == pytest.approx(q41_ppl, rel=0.01)
    assert abs(q41_ppl - f32_ppl) > abs(hf_ppl - f32_ppl)  # the gap is llama.cpp's quantized arithmetic
