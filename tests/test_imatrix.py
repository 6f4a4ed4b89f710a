"""Importance matrices: computed from the HF model as llama-imatrix accumulates them, handed to llama.cpp's
quantizer, cached by the calibration, asked for in a suite as ``quantize: {method: gguf, ..., imatrix: ...}``."""

import json

import numpy as np
import pytest
from pydantic import ValidationError

from harness.cli import main
from harness.core.windows import chunked
from harness.sources.corpora import stdlib_docs
from harness.sources.fingerprint import sha256_bytes
from harness.sources.imatrix import calibration_windows, compute_imatrix
from harness.sources.models import ModelSpec, resolve
from harness.sources.quantization import Calibration
from harness.sources.quantization.gguf import imatrix_fingerprint
from harness.tasks.kld import PositionStats

pytestmark = [pytest.mark.hf, pytest.mark.gguf, pytest.mark.models]
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

CHUNKS, N_CTX = 2, 128
IMATRIX = {"dataset": "docs-train", "chunks": CHUNKS, "n_ctx": N_CTX}


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    text = stdlib_docs("train")
    return Calibration(text=text, sha256=sha256_bytes(text.encode()))


def test_calibration_windows_are_llama_imatrix_chunks():
    """Whole windows from the start of the text, each one's first token replaced by BOS; the tail is dropped."""
    assert calibration_windows(list(range(10)), 4, 5, bos_id=99) == [[99, 1, 2, 3], [99, 5, 6, 7]]
    assert calibration_windows(list(range(10)), 4, 1, bos_id=None) == [[0, 1, 2, 3]]
    with pytest.raises(Exception, match="less than one window of 16"):
        calibration_windows(list(range(10)), 16, 1, bos_id=None)


def test_imatrix_is_the_mean_square_of_each_linear_layers_input_columns(tiny_llama_dir, calibration):
    """Checked by hand, block by block from the residual stream the model reports (``output_hidden_states``):
    the attention projections read the normed stream, gate and up the normed stream after attention, down the
    gated product. The attention output projection's input (inside attention) has an entry per column."""
    matrix = compute_imatrix(tiny_llama_dir, calibration.text, CHUNKS, N_CTX)
    assert sorted(matrix) == sorted(f"blk.{i}.{name}.weight" for i in range(2) for name in (
        "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"))
    assert matrix["blk.0.attn_output.weight"].shape == (256,) and np.all(matrix["blk.0.attn_output.weight"] > 0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    ids = tokenizer(calibration.text)["input_ids"]
    squares, count = {}, 0

    def add(name: str, x) -> None:
        x = x[0].double()
        squares[name] = squares.get(name, 0) + (x * x).sum(0)

    with torch.no_grad():
        for window in [ids[i * N_CTX:(i + 1) * N_CTX] for i in range(CHUNKS)]:  # SmolLM2 adds no BOS
            hidden = model(torch.tensor([window]), output_hidden_states=True).hidden_states
            rotary = model.model.rotary_emb(hidden[0], position_ids=torch.arange(len(window))[None])
            for i, layer in enumerate(model.model.layers):
                normed = layer.input_layernorm(hidden[i])
                middle = hidden[i] + layer.self_attn(normed, position_embeddings=rotary, attention_mask=None)[0]
                ffn_in = layer.post_attention_layernorm(middle)
                gated = layer.mlp.act_fn(layer.mlp.gate_proj(ffn_in)) * layer.mlp.up_proj(ffn_in)
                if i + 1 < len(model.model.layers):  # the last entry is after the final norm
                    torch.testing.assert_close(middle + layer.mlp.down_proj(gated), hidden[i + 1])
                for name, x in (("attn_q", normed), ("attn_k", normed), ("attn_v", normed), ("ffn_gate", ffn_in),
                                ("ffn_up", ffn_in), ("ffn_down", gated)):
                    add(f"blk.{i}.{name}.weight", x)
            count += len(window)
    for name, total in squares.items():
        np.testing.assert_allclose(matrix[name], (total / count).numpy(), rtol=1e-4, err_msg=name)
    assert not np.allclose(matrix["blk.0.attn_q.weight"], matrix["blk.1.attn_q.weight"])


def _logprobs(model, windows) -> np.ndarray:
    from harness.backends.llamacpp.backend import LlamaCppBackend, LlamaCppSettings

    backend = LlamaCppBackend(LlamaCppSettings(type="llamacpp", n_threads=2), model)
    backend.load(context_tokens=128)
    rows = np.concatenate([r for _, _, r in backend.logprobs(windows)])
    backend.close()
    return rows


def test_an_imatrix_rung_differs_from_the_plain_one_and_is_cached(tiny_llama_dir, calibration, capsys):
    """The matrix reached llama.cpp: the same type made with it holds other blocks. Its KLD against the F32
    base and the plain rung's are recorded here (which is lower is the benchmark's question, not a test's)."""
    base = tiny_llama_dir.parent
    plain = resolve("q4", ModelSpec(hf=str(tiny_llama_dir), quantize="Q4_K_M"), base)
    spec = ModelSpec(hf=str(tiny_llama_dir), quantize={"method": "gguf", "type": "Q4_K_M", "imatrix": IMATRIX})
    weighted = resolve("q4-imatrix", spec, base, calibration)
    assert weighted.path != plain.path and weighted.sha256 != plain.sha256
    assert weighted.source.endswith(f"#quantize=Q4_K_M+imatrix=docs-train/{CHUNKS}x{N_CTX}")
    ours, theirs = (gguf.GGUFReader(m.path) for m in (weighted, plain))
    changed = [a.name for a, b in zip(ours.tensors, theirs.tensors, strict=True)
               if a.tensor_type == b.tensor_type and not np.array_equal(a.data, b.data)]
    assert any(name.startswith("blk.") for name in changed)
    mtime = weighted.path.stat().st_mtime_ns
    again = resolve("q4-imatrix", spec, base, calibration)
    assert again.path == weighted.path and again.path.stat().st_mtime_ns == mtime
    key = imatrix_fingerprint(spec.quantization, calibration)
    assert weighted.path.name.endswith(f"-Q4_K_M-imatrix-{key[:16]}.gguf")
    more = ModelSpec(hf="x", quantize={"type": "Q4_K_M", "imatrix": {**IMATRIX, "chunks": 3}}).quantization
    other_text = Calibration(text="", sha256="0" * 64)
    assert len({key, imatrix_fingerprint(more, calibration), imatrix_fingerprint(spec.quantization, other_text)}) == 3
    assert not list(weighted.path.parent.glob("*.tmp"))

    f32 = resolve("f32", ModelSpec(hf=str(tiny_llama_dir), quantize="F32"), base)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_llama_dir)
    windows = chunked(np.array(tokenizer(stdlib_docs("test"))["input_ids"]), 128, None)[:2]
    reference = _logprobs(f32, windows)
    targets = np.concatenate([w.targets for w in windows])
    kld = {}
    for label, model in (("plain", plain), ("imatrix", weighted)):
        positions = PositionStats()
        positions.add(reference, _logprobs(model, windows), targets)
        kld[label] = float(positions.arrays()["kld"].mean())
    with capsys.disabled():
        print(f"\ntiny Llama Q4_K_M vs its F32 base, mean KLD on {len(targets)} positions: plain {kld['plain']:.6f}, "
              f"imatrix {kld['imatrix']:.6f}")
    assert kld["plain"] > 0 and kld["imatrix"] > 0 and kld["plain"] != kld["imatrix"]


def test_iq_types_need_an_imatrix(tiny_llama_dir, calibration):
    with pytest.raises(ValidationError, match="IQ2_XS needs an importance matrix"):
        ModelSpec(hf="x", quantize="IQ2_XS")
    with pytest.raises(ValidationError, match="IQ3_XXS needs an importance matrix"):
        ModelSpec(gguf="x", quantize={"method": "gguf", "type": "IQ3_XXS"})
    with pytest.raises(ValidationError, match="F32 is the unquantized base"):
        ModelSpec(gguf="x", quantize={"type": "F32", "imatrix": IMATRIX})
    iq2 = resolve("iq2", ModelSpec(hf=str(tiny_llama_dir), quantize={"type": "IQ2_XS", "imatrix": IMATRIX}),
                  tiny_llama_dir.parent, calibration)
    assert "IQ2_XS" in {t.tensor_type.name for t in gguf.GGUFReader(iq2.path).tensors}


def test_the_embedding_keeps_the_type_the_suite_gives_it(tiny_llama_dir):
    """llama-quantize's --token-embedding-type: llama.cpp quantizes a tied embedding with the rung by default
    (Q6_K in a Q4_K_M file); the lab keeps it F32, as every HF method keeps it, and the blocks are unchanged."""
    base = tiny_llama_dir.parent
    plain = resolve("q4", ModelSpec(hf=str(tiny_llama_dir), quantize="Q4_K_M"), base)
    kept = resolve("q4-embd", ModelSpec(hf=str(tiny_llama_dir), quantize={
        "type": "Q4_K_M", "token_embedding_type": "F32"}), base)
    assert kept.path != plain.path and kept.path.name.endswith("-Q4_K_M-token_embd-F32.gguf")
    assert kept.source.endswith("#quantize=Q4_K_M+token_embd=F32")
    ours, theirs = ({t.name: t for t in gguf.GGUFReader(m.path).tensors} for m in (kept, plain))
    assert ours.keys() == theirs.keys() and "output.weight" not in ours  # tied: the embedding is the head too
    assert theirs["token_embd.weight"].tensor_type.name == "Q6_K"
    assert ours["token_embd.weight"].tensor_type.name == "F32"
    assert all(a.tensor_type == theirs[name].tensor_type and np.array_equal(a.data, theirs[name].data)
               for name, a in ours.items() if name != "token_embd.weight")
    assert kept.bytes_on_disk > plain.bytes_on_disk + 49152 * 256 * (4 - 6.5625 / 8) - 4096
    with pytest.raises(ValidationError, match="token_embedding_type: expected one of F32, F16, Q8_0"):
        ModelSpec(gguf="x", quantize={"type": "Q4_K_M", "token_embedding_type": "f32"})
    with pytest.raises(ValidationError, match="output_tensor_type: applies to llama.cpp's quantized types"):
        ModelSpec(gguf="x", quantize={"type": "F16", "output_tensor_type": "F32"})
    unset = ModelSpec(gguf="x", quantize={"type": "Q4_K_M", "imatrix": {"dataset": "d"}})
    assert "token_embedding_type" not in unset.model_dump(mode="json")["quantize"]  # cell ids stay


def test_the_shorthand_keeps_its_form_and_the_long_form_is_checked():
    """``quantize: TYPE`` serializes as it did (cell ids stay); a wrong long form is one error naming its key."""
    assert ModelSpec(gguf="x", quantize="Q4_K_M").model_dump(mode="json")["quantize"] == "Q4_K_M"
    long = ModelSpec(gguf="x", quantize={"type": "Q4_K_M", "imatrix": {"dataset": "d"}})
    assert long.model_dump(mode="json")["quantize"] == {
        "method": "gguf", "type": "Q4_K_M", "imatrix": {"dataset": "d", "chunks": 100, "n_ctx": 512}}
    with pytest.raises(ValidationError, match=r"imatrix\.chunks: Input should be greater than or equal to 1"):
        ModelSpec(gguf="x", quantize={"type": "Q4_K_M", "imatrix": {"dataset": "d", "chunks": 0}})
    with pytest.raises(ValidationError, match="bits: unknown key"):
        ModelSpec(gguf="x", quantize={"type": "Q4_K_M", "bits": 4})


def _suite(tmp_path, hf_dir, calibrate_on: str, evaluate_on: str = "docs-test"):
    suite = tmp_path / "suite.yaml"
    suite.write_text(json.dumps({
        "name": "imatrix", "models": {"q4i": {"hf": str(hf_dir), "quantize": {
            "method": "gguf", "type": "Q4_K_M", "imatrix": {**IMATRIX, "dataset": calibrate_on}}}},
        "backends": {"cpu": {"type": "llamacpp", "n_threads": 2}},
        "datasets": {"docs-train": {"source": "builtin:stdlib-docs#train"},
                     "docs-test": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": evaluate_on, "n_ctx": 128, "max_tokens": 512}},
        "matrix": [{"model": "q4i", "backend": "cpu", "task": "ppl"}]}))
    return suite


def test_the_calibration_dataset_is_checked_and_its_overlap_with_the_test_text_warned(tiny_llama_dir, tmp_path,
                                                                                       capsys):
    assert main(["validate", str(_suite(tmp_path, tiny_llama_dir, "wiki"))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models.q4i.quantize.imatrix.dataset: dataset 'wiki' is not defined" in err
    assert main(["validate", str(_suite(tmp_path, tiny_llama_dir, "docs-test"))]) == 0
    err = capsys.readouterr().err
    assert "'docs-test' is the text its cells evaluate" in err and len(err.strip().splitlines()) == 1
    assert main(["validate", str(_suite(tmp_path, tiny_llama_dir, "docs-train"))]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_suite_runs_an_imatrix_rung_of_an_hf_source(tiny_llama_dir, tmp_path):
    """The run resolves the calibration dataset, makes (here: finds) the matrix and the rung, and scores it."""
    out = tmp_path / "run"
    assert main(["run", str(_suite(tmp_path, tiny_llama_dir, "docs-train")), "--out", str(out)]) == 0
    record = json.loads(next((out / "cells").glob("*.json")).read_text())
    assert record["status"] == "ok", record
    assert "#quantize=Q4_K_M+imatrix=docs-train" in json.dumps(record)
