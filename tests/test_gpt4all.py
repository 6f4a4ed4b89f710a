"""The gpt4all backend on the real SmolLM2 GGUF: the derived copy its older llama.cpp loads, prompts it
tokenizes exactly as llama.cpp does, greedy text equal to the llamacpp backend's, and what it cannot
measure recorded as skipped."""

import numpy as np
import pytest
from conftest import SMOLLM2_PKG

from harness.sampling import Decoding
from suites import run_suite

pytestmark = pytest.mark.integration
pytest.importorskip("gpt4all")


@pytest.fixture(scope="module")
def backend(smollm2_model):
    from harness.backends.gpt4all import Gpt4AllBackend, Gpt4AllSettings

    b = Gpt4AllBackend(Gpt4AllSettings(type="gpt4all", n_threads=2), smollm2_model)
    b.prepared = b.prepare()
    b.load(context_tokens=512)
    yield b
    b.close()


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


def test_greedy_text_equals_llamacpp_and_prompt_tokens_match(backend, smollm2_model, corpora_dir):
    """Same weights, same greedy settings: the same text. Two llama.cpp builds (gpt4all's is from 2024)
    round differently, so on a long prompt a near-tie may flip: where the texts part, llama.cpp's own
    scoring must rate the two choices within a factor of 1.5."""
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    llama = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), smollm2_model)
    llama.load(context_tokens=512)
    short = llama.tokenizer.prompt("The history of the Roman Empire")
    ours, theirs = (b.generate(short, Decoding(temperature=0), 24) for b in (backend, llama))
    assert ours.tokens == theirs.tokens and ours.text == theirs.text
    assert ours.max_prob == [] and 0 < ours.prefill_s < ours.times[0] and all(np.diff(ours.times) > 0)

    text = (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()[:4000]
    prompt = llama.tokenizer.encode(text)[:300]  # gpt4all re-tokenizes the text: the ids must survive
    ours, theirs = (b.generate(prompt, Decoding(temperature=0), 32).tokens for b in (backend, llama))
    assert_same_or_near_tie(llama, prompt, ours, theirs)
    llama.close()


def assert_same_or_near_tie(llama, prompt, ours: list[int], theirs: list[int]) -> None:
    """Where two greedy generations part, llama.cpp's own scoring rates both choices within 1.5x."""
    from harness.backends.base import Window

    parted = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    if parted is None:  # the same tokens (one may have stopped at EOS earlier)
        return
    context = np.array(list(prompt) + theirs[:parted], dtype=np.int32)
    probs = [np.exp(llama.score([Window(context, np.r_[np.full(len(context) - 1, -1), t])])[0][0])
             for t in (ours[parted], theirs[parted])]
    assert max(probs) / min(probs) < 1.5, (parted, probs)


def test_what_gpt4all_cannot_measure_is_skipped_with_a_reason(tmp_path):
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


def test_chat_prompts_and_every_sampling_parameter_reach_gpt4all(backend, smollm2_model):
    """A chat-formatted prompt goes in as gpt4all's chat-session template, its special tokens parsed
    as llama.cpp parses them; greedy answers equal llamacpp's up to a near tie (its 2024 llama.cpp
    rounds differently: the first answer token of a chat is often a close call). Sampling parameters
    are gpt4all's own (min-p, repetition penalty and window), which run without a seed."""
    from harness.backends.llamacpp import LlamaCppBackend, LlamaCppSettings

    llama = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), smollm2_model)
    llama.load(context_tokens=512)
    for question in ("Name three colours.", "Write a haiku about the sea."):
        chat = llama.tokenizer.chat_prompt(question)  # gpt4all checks that it evaluated exactly these ids
        for decoding in (Decoding(temperature=0), Decoding(temperature=0, repetition_penalty=1.5)):
            ours, theirs = (b.generate(chat, decoding, 24).tokens for b in (backend, llama))
            assert ours
            assert_same_or_near_tie(llama, chat, ours, theirs)
    sampled = backend.generate(chat, Decoding(temperature=1.0, min_p=0.05, top_k=40, top_p=0.9), 16)
    assert sampled.tokens and sampled.entropy == []
    llama.close()
