"""The gpt4all backend on the real SmolLM2 GGUF: the derived copy its older llama.cpp loads, prompts it
tokenizes exactly as llama.cpp does, greedy text equal to the llamacpp backend's, and what it cannot
measure recorded as skipped."""

import numpy as np
import pytest
from conftest import SMOLLM2_PKG

from harness.core.decoding import Decoding
from suites import run_suite

pytestmark = [pytest.mark.integration, pytest.mark.gpt4all, pytest.mark.gguf]
pytest.importorskip("gpt4all", reason="needs the gpt4all extra (pip install -e '.[gpt4all]')")


@pytest.fixture(scope="module")
def backend(smollm2_model):
    from harness.backends.gpt4all import Gpt4AllBackend, Gpt4AllSettings

    b = Gpt4AllBackend(Gpt4AllSettings(type="gpt4all", n_threads=2), smollm2_model)
    b.prepared = b.prepare()
    b.loaded = b.load(context_tokens=512)
    yield b
    b.close()


def test_shape_from_the_gguf_file_matches_smollm2(backend):
    """The shape MBU/MFU rest on, read from the file (gpt4all exposes no metadata): SmolLM2-135M's config."""
    shape = backend.loaded.shape
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.head_dim, shape.kv_dtype_bytes) == (30, 9, 3, 64, 2)
    assert shape.n_params == pytest.approx(134.5e6, rel=0.01)


def test_derived_gguf_renames_only_the_pre_tokenizer(backend, smollm2_model):
    import gguf

    prepared = backend.prepared
    assert prepared["derivation"] == "tokenizer.ggml.pre 'smollm' -> 'command-r'"
    assert prepared["derived_from_sha256"] == smollm2_model.sha256
    source, derived = gguf.GGUFReader(smollm2_model.path), gguf.GGUFReader(backend._path)
    assert derived.fields["tokenizer.ggml.pre"].contents() == "command-r"
    for name, field in source.fields.items():
        if not name.startswith("GGUF.") and name != "tokenizer.ggml.pre":
            assert derived.fields[name].contents() == field.contents(), name
    for a, b in zip(source.tensors, derived.tensors, strict=True):
        assert a.name == b.name and a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data)


@pytest.fixture(scope="module")
def f32_pair(smollm2_f32_model):
    """gpt4all and llamacpp on SmolLM2's weights in F32. On F32 weights the two llama.cpp builds (gpt4all's
    is from 2024) compute the same logits up to float rounding; on the shipped Q4_1 their quantized dot
    products differ (AVX-512 kernels), and greedy texts part at near ties (second- vs first-ranked token,
    p 0.126 vs 0.128), which would hide a wrong prompt behind a loose tolerance."""
    from harness.backends.gpt4all import Gpt4AllBackend, Gpt4AllSettings
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings

    g4a = Gpt4AllBackend(Gpt4AllSettings(type="gpt4all", n_threads=2), smollm2_f32_model)
    g4a.prepared = g4a.prepare()
    llama = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), smollm2_f32_model)
    for b in (g4a, llama):
        b.load(context_tokens=512)
    yield g4a, llama
    g4a.close()
    llama.close()


def test_greedy_text_equals_llamacpp_and_prompt_tokens_match(f32_pair, corpora_dir):
    """Same weights, same greedy settings: the same text, on a short prompt and on 300 tokens of
    WikiText-2 that gpt4all must re-tokenize into the same ids."""
    g4a, llama = f32_pair
    short = llama.tokenizer.prompt("The history of the Roman Empire")
    decoding = Decoding(temperature=0)
    ours, theirs = (b.generate(short, decoding, 24) for b in (g4a, llama))
    assert_same_or_float_tie(llama, short, ours.tokens, theirs.tokens, decoding)
    assert ours.max_prob == [] and 0 < ours.prefill_s < ours.times[0] and all(np.diff(ours.times) > 0)

    text = (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()[:4000]
    prompt = llama.tokenizer.encode(text)[:300]
    ours, theirs = (b.generate(prompt, decoding, 32).tokens for b in (g4a, llama))
    assert_same_or_float_tie(llama, prompt, ours, theirs, decoding)


def assert_same_or_float_tie(llama, prompt, ours: list[int], theirs: list[int], decoding: Decoding) -> None:
    """Where two greedy generations part, llama.cpp rates both choices (after the same repetition
    penalty) within 1%: a tie that float rounding may break either way, not a different prompt."""
    from harness.core.decoding import softmax
    from harness.core.sampling import penalize

    parted = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if parted is None:  # the same tokens (one may have stopped at EOS earlier)
        return
    steps = llama.logit_steps(np.asarray(prompt, dtype=np.int32), parted + 1)
    logits = next(steps)
    for token in theirs[:parted]:
        logits = steps.send(token)
    probs = softmax(penalize(logits.copy(), list(prompt) + theirs[:parted], decoding))
    steps.close()
    assert probs[theirs[parted]] / probs[ours[parted]] < 1.01, (parted, probs[ours[parted]], probs[theirs[parted]])


def test_what_gpt4all_cannot_measure_is_skipped_with_a_reason(tmp_path, small_probe):
    suite = {"name": "g4a", "models": {"m": {"gguf": SMOLLM2_PKG}},
             "backends": {"g4a": {"type": "gpt4all", "n_threads": 2}},
             "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
             "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 128, "max_tokens": 256},
                       "speed": {"type": "throughput", "dataset": "docs", "prompt_tokens": 64, "new_tokens": 8,
                                 "repeats": 2, "warmup": 0}},
             "matrix": [{"model": "m", "backend": "g4a", "task": ["ppl", "speed"]}]}
    _, table = run_suite(tmp_path, suite)
    ppl = table[table.task == "ppl"]
    assert ppl.status.tolist() == ["skipped"] and "lacks capability score" in ppl.reason.iloc[0]
    speed = table[table.task == "speed"].set_index("metric")
    assert speed.loc["decode_tok_s", "value"] > 0 and speed.loc["prefill_tok_s", "n"] == 2
    assert speed.loc["mbu", "value"] > 0 and speed.loc["mfu", "n"] == 2


def test_chat_prompts_and_every_sampling_parameter_reach_gpt4all(f32_pair):
    """A chat-formatted prompt goes in as gpt4all's chat-session template, its special tokens parsed as
    llama.cpp parses them - every one of them: SmolLM2's BOS is its <|im_start|>, which must not be
    dropped as a BOS gpt4all would add. Greedy answers, with and without a repetition penalty, equal
    llamacpp's. Sampling parameters are gpt4all's own (min-p, repetition penalty and window), which
    run without a seed."""
    g4a, llama = f32_pair
    for question in ("Name three colours.", "Write a haiku about the sea."):
        chat = llama.tokenizer.chat_prompt(question)  # gpt4all checks that it evaluated exactly these ids
        assert list(chat).count(llama.tokenizer.bos_id) == 3
        for decoding in (Decoding(temperature=0), Decoding(temperature=0, repetition_penalty=1.5)):
            ours, theirs = (b.generate(chat, decoding, 24).tokens for b in (g4a, llama))
            assert ours
            assert_same_or_float_tie(llama, chat, ours, theirs, decoding)
    sampled = g4a.generate(chat, Decoding(temperature=1.0, min_p=0.05, top_k=40, top_p=0.9), 16)
    assert sampled.tokens and sampled.entropy == []
