"""Bits per weight from the bytes on disk, whole model and the blocks' linear layers apart, checked against
hand counts: GGUF rungs llama.cpp makes of a tiny Llama, its safetensors directory, and what torchao, quanto and
HQQ save of a smaller one; a torch pickle that would run code is refused, not run."""

import pytest

from harness.sources.models import ModelSpec, resolve
from harness.sources.weight_bytes import weight_bytes

pytestmark = pytest.mark.hf
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

#: tiny_llama_dir by hand: per block q 256x256, k and v 256x128 (2 KV heads of 64), o 256x256, gate and up
#: 256x768, down 768x256; two blocks; the tied 49,152 x 256 embedding; two norms a block and the final one
LINEAR = 2 * (256 * 256 + 2 * 256 * 128 + 256 * 256 + 3 * 256 * 768)
EMBEDDING = 49152 * 256
NORMS = 2 * 2 * 256 + 256


@pytest.mark.models
def test_the_fp32_safetensors_model_is_32_bits_everywhere(tiny_llama_dir):
    measured = weight_bytes(tiny_llama_dir)
    assert (measured["params"], measured["linear_params"]) == (LINEAR + EMBEDDING + NORMS, LINEAR)
    assert measured["tensor_bytes"] == 4 * (LINEAR + EMBEDDING + NORMS)  # tied: the embedding stored once
    assert measured["bits_per_weight"] == measured["linear_bpw"] == 32.0


@pytest.mark.gguf
@pytest.mark.models
def test_gguf_rungs_split_their_bytes_as_counted_by_hand(tiny_llama_dir):
    gguf = pytest.importorskip("gguf")
    rungs = {t: resolve(t, ModelSpec(hf=str(tiny_llama_dir), quantize=t), tiny_llama_dir.parent)
             for t in ("F32", "Q8_0", "Q4_K_M")}
    f32 = rungs["F32"].weights
    assert f32["bits_per_weight"] == f32["linear_bpw"] == 32.0 and f32["linear_params"] == LINEAR
    # Q8_0: blocks of 32 values in 34 bytes, every 2-D tensor (embedding too); norms stay F32
    q8 = rungs["Q8_0"].weights
    assert q8["linear_bytes"] == LINEAR * 34 // 32 and q8["linear_bpw"] == 8.5
    assert q8["tensor_bytes"] == (LINEAR + EMBEDDING) * 34 // 32 + 4 * NORMS
    assert q8["params"] == LINEAR + EMBEDDING + NORMS
    # Q4_K_M mixes Q4_K (144 bytes / 256) and Q6_K (210 / 256): the types as gguf-py reads them
    per_block = {"Q4_K": (256, 144), "Q6_K": (256, 210), "Q8_0": (32, 34), "F32": (1, 4)}
    linear = [t for t in gguf.GGUFReader(rungs["Q4_K_M"].path).tensors
              if t.name.startswith("blk.") and "norm" not in t.name]
    by_hand = sum(int(t.n_elements) // per_block[t.tensor_type.name][0] * per_block[t.tensor_type.name][1]
                  for t in linear)
    q4 = rungs["Q4_K_M"].weights
    assert q4["linear_bytes"] == by_hand and 4.5 < q4["linear_bpw"] < 6.5625
    assert rungs["Q4_K_M"].fingerprint()["weights"] == q4 == rungs["Q4_K_M"].described()["weights"]


def _small_llama(path, tie=True):
    """One block, hidden 64, intermediate 128, a 256-token vocabulary: quantizes in seconds."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie)
    model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)
    return model


#: _small_llama's linear layers: (inputs, outputs) of q, k, v (one KV head of 32), o, gate, up, down
SMALL = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]


def test_torchao_int8_layers_count_their_scales_and_zero_points(tmp_path):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig

    _small_llama(tmp_path / "fp")
    model = transformers.LlamaForCausalLM.from_pretrained(
        tmp_path / "fp", quantization_config=transformers.TorchAoConfig(Int8WeightOnlyConfig()))
    model.save_pretrained(tmp_path / "ao")
    measured = weight_bytes(tmp_path / "ao")
    weights = sum(i * o for i, o in SMALL)
    # int8 values, one float32 scale and one int8 zero point per output row
    assert measured["linear_params"] == weights
    assert measured["linear_bytes"] == weights + sum(5 * o for _, o in SMALL)
    assert measured["tensor_bytes"] - measured["linear_bytes"] == 4 * (256 * 64 + 3 * 64)  # embedding, norms


def test_quanto_int8_layers_count_their_scales(tmp_path):
    quanto = pytest.importorskip("optimum.quanto")

    model = _small_llama(tmp_path / "fp")
    quanto.QuantizedModelForCausalLM.quantize(model, weights=quanto.qint8, exclude="lm_head").save_pretrained(
        tmp_path / "quanto")
    measured = weight_bytes(tmp_path / "quanto")
    weights = sum(i * o for i, o in SMALL)
    # weight._data int8, weight._scale a float32 per output row, input_scale and output_scale a float32 each
    assert measured["linear_params"] == weights
    assert measured["linear_bytes"] == weights + sum(4 * o + 8 for _, o in SMALL)


def test_hqq_pickle_is_read_with_weights_only_and_counted_per_layer(tmp_path):
    pytest.importorskip("hqq")
    from hqq.core.quantize import BaseQuantizeConfig
    from hqq.models.hf.base import AutoHQQHFModel

    model = _small_llama(tmp_path / "fp", tie=False)
    AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=4, group_size=64),
                                  compute_dtype=torch.float32, device="cpu")
    AutoHQQHFModel.save_quantized(model, str(tmp_path / "hqq"))
    measured = weight_bytes(tmp_path / "hqq")
    # 4-bit values packed two a byte, a float32 scale and zero per group of 64: 4 + 64 / 64 bits a weight
    assert measured["linear_params"] == sum(i * o for i, o in SMALL)
    assert measured["linear_bpw"] == 5.0


def test_a_gptq_layout_counts_packed_weights_zeros_scales_and_group_indices(tmp_path):
    """The tensors GPTQ checkpoints hold per linear layer (4 bits, groups of 32), written in code: gptqmodel
    itself needs the quant extra. Everything under a layer's name counts toward it; the config gives the
    full-precision shapes."""
    from safetensors.torch import save_file

    model = _small_llama(tmp_path)
    state = {name: tensor for name, tensor in model.state_dict().items()
             if not name.endswith("proj.weight") and name != "lm_head.weight"}
    prefixes = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                "mlp.up_proj", "mlp.down_proj"]
    for prefix, (inputs, outputs) in zip(prefixes, SMALL, strict=True):
        layer = f"model.layers.0.{prefix}"
        state |= {f"{layer}.qweight": torch.zeros(inputs // 8, outputs, dtype=torch.int32),
                  f"{layer}.qzeros": torch.zeros(inputs // 32, outputs // 8, dtype=torch.int32),
                  f"{layer}.scales": torch.zeros(inputs // 32, outputs, dtype=torch.float16),
                  f"{layer}.g_idx": torch.zeros(inputs, dtype=torch.int32)}
    save_file(state, tmp_path / "model.safetensors")
    measured = weight_bytes(tmp_path)
    by_hand = sum(i * o // 2 + (i // 32) * (o // 8) * 4 + (i // 32) * o * 2 + 4 * i for i, o in SMALL)
    assert measured["linear_bytes"] == by_hand and measured["linear_params"] == sum(i * o for i, o in SMALL)


class _RunsCode:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PWNED_PATH'], 'w').close()",))


def test_a_torch_pickle_that_would_run_code_is_refused_not_run(tmp_path, monkeypatch):
    _small_llama(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"model.layers.0.self_attn.q_proj.weight": _RunsCode()}, tmp_path / "pytorch_model.bin")
    monkeypatch.setenv("PWNED_PATH", str(tmp_path / "pwned"))
    measured = weight_bytes(tmp_path)
    assert measured == {"unmeasured": "pytorch_model.bin: torch.load(weights_only=True) refused it (UnpicklingError)"}
    assert not (tmp_path / "pwned").exists()


def test_a_directory_without_weights_says_why(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert "no weight file" in weight_bytes(tmp_path)["unmeasured"]


@pytest.mark.integration
@pytest.mark.gguf
@pytest.mark.models
def test_a_run_records_the_bits_where_the_quantization_view_reads_them(tiny_llama_dir, tmp_path):
    """A suite on the tiny Llama: its fp32 weights on the hf backend are the reference, the F32 and Q8_0 GGUFs made
    from it the candidates. Each cell records its model's source and bits per weight; the report's table shows
    the families, the file's bits (Q8_0's linear layers: 8.5) and the F32 GGUF's KLD as the conversion floor."""
    import json

    from harness.cli import main
    from harness.report import views
    from harness.results.store import read_run

    text = tmp_path / "text.txt"
    text.write_text("It was a bright cold day in April, and the clocks were striking thirteen. " * 40)
    suite = tmp_path / "lab.yaml"
    suite.write_text(json.dumps({
        "name": "tiny-lab",
        "models": {"fp32": {"hf": str(tiny_llama_dir)}, "f32": {"hf": str(tiny_llama_dir), "quantize": "F32"},
                   "q8_0": {"hf": str(tiny_llama_dir), "quantize": "Q8_0"}},
        "backends": {"hf-cpu": {"type": "hf", "dtype": "float32", "n_threads": 2},
                     "gguf-cpu": {"type": "llamacpp", "n_threads": 2}},
        "datasets": {"text": {"source": f"file:{text}"}},
        "tasks": {"kld": {"type": "kld", "dataset": "text", "n_ctx": 128, "max_tokens": 256,
                          "reference": {"model": "fp32", "backend": "hf-cpu"}}},
        "matrix": [{"model": ["f32", "q8_0"], "backend": "gguf-cpu", "task": "kld"}]}))
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out)]) == 0
    run = read_run(out)
    params = json.loads(run.results[run.results["model"] == "q8_0"]["params"].iloc[0])
    assert params["resolved"]["model"]["source"].endswith("#quantize=Q8_0")
    assert params["resolved"]["model"]["weights"]["linear_params"] == LINEAR
    assert run.info["models"]["q8_0"]["weights"] == params["resolved"]["model"]["weights"]
    table = views.quantization_table(run.results[run.results["status"] == "ok"]).set_index("model")
    assert table["family"].tolist() == ["F32", "gguf"] and table["bpw_of"].tolist() == ["file", "file"]
    assert table.loc["q8_0", "linear_bpw"] == 8.5 and table.loc["f32", "linear_bpw"] == 32.0
    assert views.conversion_floor(table) == table.loc["f32", "kld_mean"] > 0


@pytest.mark.parametrize("header", [b"\xff" * 8, (2).to_bytes(8, "little") + b"[]",
                                    (9).to_bytes(8, "little") + b'{"a": {}}'])
def test_a_damaged_safetensors_file_is_one_line_naming_it(tmp_path, header):
    from harness.core.errors import UserError

    (tmp_path / "model.safetensors").write_bytes(header)
    with pytest.raises(UserError, match=r"model\.safetensors: not a safetensors file"):
        weight_bytes(tmp_path)
