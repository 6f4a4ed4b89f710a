"""The llamacpp backend on the real SmolLM2 GGUF, checked against llama-cpp-python's high-level API."""

import numpy as np
import pytest
from scipy.special import log_softmax

from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings
from harness.core.windows import chunked
from harness.sources.models import ModelSpec, resolve

pytestmark = [pytest.mark.integration, pytest.mark.gguf]


@pytest.fixture(scope="module")
def text(corpora_dir):
    return (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_bytes().decode()[:12000]


@pytest.fixture(scope="module")
def backend(smollm2_llamacpp):
    return smollm2_llamacpp


@pytest.fixture(scope="module")
def reference(smollm2_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(str(smollm2_path), n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
                          verbose=False)
    yield llm
    llm.close()


def test_tokenizer_matches_llama_cpp_python(backend, reference, text):
    ours = backend.tokenizer.encode(text)
    assert ours.tolist() == reference.tokenize(text.encode(), add_bos=False, special=False)
    assert b"".join(backend.tokenizer.token_bytes(t) for t in ours) == text.encode()
    assert backend.tokenizer.vocab_size == reference.n_vocab()
    assert backend.tokenizer.add_bos is False  # SmolLM2's GGUF does not add BOS


def test_batched_scoring_matches_single_sequence_eval(backend, reference, text):
    """Several windows as parallel sequences of one llama_decode give the same log-probs as evaluating
    each window alone through Llama.eval with logits_all, with an independent log-softmax."""
    tokens = backend.tokenizer.encode(text)
    windows = chunked(tokens, 256, backend.tokenizer.bos_id)[:5]  # one decode: n_seq = 2048 // 256
    assert backend.n_seq == 8
    ours = backend.score(windows)
    for window, logprobs in zip(windows, ours, strict=True):
        reference.reset()
        reference.eval(window.input_ids.tolist())
        scores = np.asarray(reference.scores[: len(window.input_ids)], dtype=np.float64)
        expected = log_softmax(scores, axis=1)[window.scored_positions, window.targets]
        assert logprobs.shape == expected.shape
        np.testing.assert_allclose(logprobs, expected, rtol=0, atol=2e-3)
        assert abs(logprobs.sum() - expected.sum()) / abs(expected.sum()) < 1e-4


def test_long_windows_split_across_decode_calls(smollm2_path, text):
    """A window longer than n_batch is decoded in several calls, the KV cache carrying the context."""
    model = resolve("smollm2", ModelSpec(gguf=str(smollm2_path)), smollm2_path.parent)
    small = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2, n_batch=64, n_ubatch=64), model)
    whole = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), model)
    try:
        small.load(context_tokens=256)
        whole.load(context_tokens=256)
        windows = chunked(small.tokenizer.encode(text), 256, None)[:2]
        for a, b in zip(small.score(windows), whole.score(windows), strict=True):
            np.testing.assert_allclose(a, b, atol=2e-3)
    finally:
        small.close()
        whole.close()
