"""The hf backend on the real SmolLM2 GGUF: materialized once into an HF directory, it tokenizes and
scores like the llamacpp backend on the same weights."""

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from stress_text import stress_text

from harness.core.windows import chunked
from harness.tasks.kld import PositionStats

pytestmark = [pytest.mark.integration, pytest.mark.hf, pytest.mark.gguf]
pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")


@pytest.fixture(scope="module")
def hf_fp32(smollm2_model):
    from harness.backends.hf.backend import HfBackend, HfSettings

    backend = HfBackend(HfSettings(type="hf", dtype="float32", n_threads=2), smollm2_model)
    prepared = backend.prepare()
    backend.load(context_tokens=256)
    yield backend, prepared
    backend.close()


@pytest.fixture(scope="module")
def llamacpp(smollm2_llamacpp):
    return smollm2_llamacpp


@pytest.fixture(scope="module")
def text(corpora_dir):
    return (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_bytes().decode()[:20000]


def test_gguf_is_materialized_once_as_a_plain_hf_directory(hf_fp32, smollm2_model):
    from harness.backends.hf.backend import HfBackend, HfSettings

    _, prepared = hf_fp32
    hf_dir = prepared["hf_dir"]
    config = (Path(hf_dir) / "config.json").read_text()
    assert "quantization_config" not in config  # loads as a plain model, so bitsandbytes can quantize it
    again = HfBackend(HfSettings(type="hf"), smollm2_model).prepare()
    assert again == {"hf_dir": hf_dir, "materialize_s": 0.0, "gguf_tokenizer": prepared["gguf_tokenizer"]}
    assert prepared["gguf_tokenizer"] == {"model": "gpt2", "pre": "smollm", "ignore_merges": False,
                                          "pre_tokenizer": "llama.cpp's starcoder regexes"}


#: converts a GGUF in a process of its own and prints the seconds it spent building (0: reused)
CONVERT = ("import sys; from pathlib import Path; from harness.sources.gguf_to_hf import ensure_materialized; "
           "print(ensure_materialized(Path(sys.argv[1]), sys.argv[2])[1])")


def test_two_processes_converting_one_gguf_at_once_build_it_once(smollm2_model, tmp_path, monkeypatch):
    """Two runs of an hf-on-GGUF suite on one fresh cache used to fail both (``gguf_tokenizer.json``: ENOENT, one
    fixed temp folder) and every later run: now one converts, the other waits and reuses it."""
    from harness.sources.gguf_to_hf import check_materialized, materialized_dir

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    args = [sys.executable, "-c", CONVERT, str(smollm2_model.path), smollm2_model.sha256]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outputs]
    seconds = sorted(float(out.strip().splitlines()[-1]) for out, _ in outputs)
    assert seconds[0] == 0.0 < seconds[1]  # one built it, the other reused it
    target = materialized_dir(smollm2_model.sha256)
    check_materialized(target)
    assert [p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")] == [target.name]


def test_same_tokens_as_llama_cpp(hf_fp32, llamacpp, text):
    """On a WikiText slice and on a text made of every hard case (the whole corpora: the parity marker)."""
    hf, _ = hf_fp32
    for sample in (text, stress_text()):
        np.testing.assert_array_equal(hf.tokenizer.encode(sample), llamacpp.tokenizer.encode(sample))
    assert hf.tokenizer.add_bos == llamacpp.tokenizer.add_bos
    ids = hf.tokenizer.encode(text)
    np.testing.assert_array_equal(hf.tokenizer.byte_counts(text, ids), llamacpp.tokenizer.byte_counts(text, ids))


def _ppl(backend, windows):
    return math.exp(-np.concatenate(backend.score(windows)).mean())


def test_dequantized_fp32_agrees_with_llama_cpp_on_equal_weights(hf_fp32, llamacpp, text, smollm2_f32_model):
    """hf fp32 holds the Q4_1 blocks dequantized. llama.cpp given those same weights as an F32 GGUF
    agrees to 0.05%; on the Q4_1 file itself it differs by about 0.6%, because its quantized matmuls
    round the activations to 8 bits (Q4_1 x Q8_1 dot products) - arithmetic, not weights."""
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings

    hf, _ = hf_fp32
    windows = chunked(llamacpp.tokenizer.encode(text), 256, llamacpp.tokenizer.bos_id)[:8]
    f32 = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), smollm2_f32_model)
    f32.load(context_tokens=256)
    hf_ppl, f32_ppl, q41_ppl = _ppl(hf, windows), _ppl(f32, windows), _ppl(llamacpp, windows)
    positions = PositionStats()
    for w in windows[:2]:
        ref, cand = (np.concatenate([rows for _, _, rows in b.logprobs([w])]) for b in (f32, hf))
        positions.add(ref, cand, w.targets)
    f32.close()
    # equal weights, only the arithmetic apart: a divergence near zero and never below (rows normalized)
    kld = positions.arrays()["kld"]
    assert 0 <= kld.mean() < 1e-5 and kld.min() > -1e-6
    assert hf_ppl == pytest.approx(f32_ppl, rel=5e-4)
    assert hf_ppl == pytest.approx(q41_ppl, rel=0.01)
    assert abs(q41_ppl - f32_ppl) > abs(hf_ppl - f32_ppl)  # the gap is llama.cpp's quantized arithmetic


def _first_split(a: list[int], b: list[int]) -> int | None:
    parted = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
    return parted if parted is not None or len(a) == len(b) else min(len(a), len(b))


@pytest.mark.parametrize("decoding", [{"temperature": 0}, {"temperature": 0, "repetition_penalty": 1.3}])
def test_harness_sampling_gives_the_same_tokens_on_llamacpp_and_hf(hf_fp32, llamacpp, decoding):
    """The harness's sampler on two backends whose log-probs agree: the same seed and strategy give the
    same tokens. Their logits differ by llama.cpp's 8-bit activation rounding, so where the tokens part
    the two choices must have been a near tie in llama.cpp's distribution (within a factor of 1.5).
    (Sampled draws part wherever a draw lands within that rounding of a boundary of the cumulative
    distribution, which no tolerance on probabilities bounds; seeds are checked per backend.)"""
    from harness.core.decoding import Decoding

    hf, _ = hf_fp32
    d = Decoding(**decoding)
    for prompt in ("The history of the Roman Empire", "Once upon a time, in a small village,"):
        ids = llamacpp.tokenizer.prompt(prompt)
        ours, theirs = (b.generate(ids, d, 32, sampler="harness") for b in (llamacpp, hf))
        split = _first_split(ours.tokens, theirs.tokens)
        if split is not None:
            step = ours.steps[split]
            alternatives = dict(step["top"])
            assert theirs.tokens[split] in alternatives, (prompt, split)
            assert step["model_p"] / alternatives[theirs.tokens[split]] < 1.5, (prompt, split, step)
        else:
            assert ours.text == theirs.text
        np.testing.assert_allclose(ours.entropy[:split], theirs.entropy[:split], atol=0.05)


def test_chat_prompts_follow_the_models_template(hf_fp32, llamacpp):
    hf, _ = hf_fp32
    ids = llamacpp.tokenizer.chat_prompt("What is the capital of France?")
    text = llamacpp.tokenizer.markup(ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>user\nWhat is the capital of "
                                                                      "France?<|im_end|>\n<|im_start|>assistant\n")
    assert ids[0] == llamacpp.tokenizer.encode_special("<|im_start|>")[0] and len(ids) < len(text) // 2
    if hf.tokenizer.chat_template is not None:  # the template travels with the materialized directory
        np.testing.assert_array_equal(hf.tokenizer.chat_prompt("What is the capital of France?"), ids)


def test_native_samplers_follow_their_settings(hf_fp32, llamacpp):
    """llama.cpp's chain and transformers' generate: top-k 1 is greedy; min-p keeps the sampled
    distribution's support to tokens at least min_p of the top one; seeds repeat."""
    from harness.core.decoding import Decoding

    hf, _ = hf_fp32
    ids = llamacpp.tokenizer.prompt("The history of the Roman Empire")
    for backend in (llamacpp, hf):
        greedy = backend.generate(ids, Decoding(temperature=0), 16)
        assert backend.generate(ids, Decoding(temperature=1.0, top_k=1, seed=3), 16).tokens == greedy.tokens
        a, b = (backend.generate(ids, Decoding(temperature=1.0, min_p=0.1, seed=s), 16) for s in (4, 4))
        assert a.tokens == b.tokens
        # at temperature 1 min-p filters the model's own distribution: every drawn token survived it
        assert all(step["model_p"] >= 0.1 * step["top"][0][1] * (1 - 1e-4) for step in a.steps)
