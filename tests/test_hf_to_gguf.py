"""A Hugging Face (safetensors) source written as a GGUF file: llama.cpp computes the logits transformers does,
tokenizes as the source's tokenizer does, and other models are refused in one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SMOLLM2_PKG
from stress_text import stress_text

from harness.cli import main
from harness.core.errors import UserError
from harness.core.windows import chunked
from harness.sources.hf_to_gguf import check_convertible, interleave_rotary
from harness.sources.models import ModelSpec, resolve
from harness.tasks.kld import PositionStats

pytestmark = [pytest.mark.hf, pytest.mark.gguf, pytest.mark.models]
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

TEXT = ("The history of the Roman Empire covers the history of ancient Rome from the fall of the Roman Republic "
        "in 27 BC until the abdication of Romulus Augustulus in AD 476 in the West. ") * 4


def _llamacpp(model, context=128):
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings

    backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), model)
    backend.load(context_tokens=context)
    return backend


def _hf_logprobs(hf_dir: Path, windows) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    rows = []
    with torch.no_grad():
        for w in windows:
            logits = model(torch.tensor([w.input_ids.tolist()])).logits[0]
            rows.append(torch.log_softmax(logits, -1)[torch.from_numpy(w.scored_positions)].numpy())
    return np.concatenate(rows)


def test_rotary_rows_are_interleaved_as_llama_cpp_expects():
    """Per head, transformers keeps the first half of the rotary dimensions then the second; llama.cpp pairs
    dimension i of each half: rows a0 a1 b0 b1 become a0 b0 a1 b1 (two heads of 4 rows, one column)."""
    rows = np.array(["a0", "a1", "b0", "b1", "c0", "c1", "d0", "d1"]).reshape(8, 1)
    assert interleave_rotary(rows, 2).ravel().tolist() == ["a0", "b0", "a1", "b1", "c0", "d0", "c1", "d1"]


def test_f32_gguf_from_hf_gives_transformers_logits_through_llama_cpp(tiny_llama_dir):
    f32 = resolve("tiny-f32", ModelSpec(hf=str(tiny_llama_dir), quantize="F32"), tiny_llama_dir.parent)
    assert f32.kind == "gguf" and f32.path.name.endswith("-F32.gguf") and f32.source.endswith("#quantize=F32")
    reader = gguf.GGUFReader(f32.path)
    source = gguf.GGUFReader(json.loads((tiny_llama_dir / "tokenizer_source.json").read_text())["gguf"])
    for key in ("tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id"):
        assert reader.fields[key].contents() == source.fields[key].contents()  # the GGUF's own vocabulary
    assert "output.weight" not in {t.name for t in reader.tensors}  # tied: llama.cpp reuses token_embd
    backend = _llamacpp(f32)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = backend.tokenizer.encode(TEXT)
    assert list(ids) == hf_tokenizer(TEXT, add_special_tokens=backend.tokenizer.add_bos)["input_ids"]
    windows = chunked(ids, 64, backend.tokenizer.bos_id)[:2]
    ours = np.concatenate([rows for _, _, rows in backend.logprobs(windows)])
    backend.close()
    theirs = _hf_logprobs(tiny_llama_dir, windows)
    assert ours.shape == theirs.shape == (2 * 31, 49152)
    assert theirs.max(axis=1).mean() > np.log(1 / 49152) + 1  # distributions far from uniform: a real check
    # equal weights, only the arithmetic apart (llama.cpp keeps its KV cache in F16): a divergence near zero,
    # where query/key rows left in transformers' order give ~1.2 nats
    positions = PositionStats()
    positions.add(theirs, ours, np.concatenate([w.targets for w in windows]))
    assert positions.arrays()["kld"].mean() < 1e-5
    assert np.abs(ours - theirs).max() < 0.02


def test_f16_base_halves_the_weights(tiny_llama_dir):
    f16 = resolve("tiny-f16", ModelSpec(hf=str(tiny_llama_dir), quantize="F16"), tiny_llama_dir.parent)
    f32 = resolve("tiny-f32", ModelSpec(hf=str(tiny_llama_dir), quantize="F32"), tiny_llama_dir.parent)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(f16.path).tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert 0.45 < f16.bytes_on_disk / f32.bytes_on_disk < 0.55


def test_a_plain_bpe_tokenizer_is_written_as_llama_cpp_gpt2_vocabulary(tiny_llama_dir, tmp_path):
    """Without the record of its GGUF, the tokenizer.json is converted: its pre-tokenizer (SmolLM2's digits
    apart, then GPT-2's split) is recognized as llama.cpp's starcoder rule, and llama.cpp then cuts every hard
    case of the stress text into the tokens transformers makes."""
    from harness.backends.hf.tokenizer import HfTokenizer

    plain = tmp_path / "plain"
    shutil.copytree(tiny_llama_dir, plain)
    (plain / "tokenizer_source.json").unlink()
    assert check_convertible(plain) == "gpt2:starcoder"
    model = resolve("plain-f32", ModelSpec(hf=str(plain), quantize="F32"), tmp_path)
    fields = gguf.GGUFReader(model.path).fields
    assert [fields[f"tokenizer.ggml.{key}"].contents() for key in ("model", "pre")] == ["gpt2", "starcoder"]
    backend = _llamacpp(model)
    hf = HfTokenizer(transformers.AutoTokenizer.from_pretrained(plain))
    for text in (TEXT, stress_text()):
        np.testing.assert_array_equal(backend.tokenizer.encode(text), hf.encode(text))
    assert backend.tokenizer.add_bos == hf.add_bos and backend.tokenizer.eos_id == hf.eos_id
    backend.close()


def _suite(tmp_path: Path, hf_dir: Path) -> Path:
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "hf-rungs", "models": {"q8": {"hf": str(hf_dir), "quantize": "Q8_0"}},
        "backends": {"cpu": {"type": "llamacpp", "n_threads": 2}},
        "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 64, "max_tokens": 256}},
        "matrix": [{"model": "q8", "backend": "cpu", "task": "ppl"}]}))
    return suite


def test_other_architectures_and_tokenizers_are_refused_in_one_line(tiny_llama_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_llama_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["Gemma3ForCausalLM"]}))
    with pytest.raises(UserError, match="architecture Gemma3ForCausalLM: converting a Hugging Face model to GGUF "
                                        "supports LlamaForCausalLM"):
        check_convertible(other)
    assert main(["validate", str(_suite(tmp_path, other))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models.q8.hf" in err and "supports LlamaForCausalLM" in err
    (other / "config.json").write_text(json.dumps(config))
    (other / "tokenizer_source.json").unlink()
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["normalizer"] = {"type": "NFC"}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(UserError, match="normalizer NFC: converting a Hugging Face model to GGUF supports"):
        check_convertible(other)
    assert main(["validate", str(_suite(tmp_path, tiny_llama_dir))]) == 0


def test_a_gguf_tokenizer_whose_file_changed_is_refused(tiny_llama_dir, tmp_path):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_llama_dir, moved)
    (moved / "tokenizer_source.json").write_text(json.dumps({"gguf": str(tmp_path / "gone.gguf"), "sha256": "0"}))
    with pytest.raises(UserError, match="is gone or has changed"):
        check_convertible(moved)


@pytest.mark.integration
def test_smollm2_round_trip_gguf_to_hf_to_gguf_keeps_the_logits(smollm2_model, smollm2_f32_model):
    """SmolLM2's GGUF -> HF (the hf backend's conversion) -> GGUF F32 (the writer) holds the same weights and
    vocabulary as the GGUF dequantized directly: llama.cpp gives the same log-probs on both."""
    from harness.sources.gguf_to_hf import ensure_materialized

    hf_dir, _ = ensure_materialized(smollm2_model.path, smollm2_model.sha256)
    back = resolve("round-trip", ModelSpec(hf=str(hf_dir), quantize="F32"), hf_dir.parent)
    ours, theirs = gguf.GGUFReader(back.path), gguf.GGUFReader(smollm2_f32_model.path)
    assert ours.fields["tokenizer.ggml.tokens"].contents() == theirs.fields["tokenizer.ggml.tokens"].contents()
    rows = []
    for model in (back, smollm2_f32_model):
        backend = _llamacpp(model)
        windows = chunked(backend.tokenizer.encode(TEXT), 64, backend.tokenizer.bos_id)[:1]
        rows.append(np.concatenate([r for _, _, r in backend.logprobs(windows)]))
        backend.close()
    np.testing.assert_allclose(rows[0], rows[1], atol=1e-4)
    assert ModelSpec(gguf=SMOLLM2_PKG, quantize="F32").source.endswith("#quantize=F32")
