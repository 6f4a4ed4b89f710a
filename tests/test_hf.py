"""The hf backend on tiny models built in code: its scores against transformers' own loss and logits,
its tokenizer's bytes, bitsandbytes settings up to the device boundary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.core.errors import Unavailable
from harness.core.types import Window
from harness.core.windows import chunked, rolling, sliding
from harness.sources.models import ModelSpec, resolve
from suites import run_suite

pytestmark = pytest.mark.hf
torch = pytest.importorskip("torch", reason="needs the hf extra (pip install -e '.[hf]')")
transformers = pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")
from harness.backends.hf.backend import BnbQuantization, HfBackend, HfSettings, load_kwargs  # noqa: E402

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be "
        "in want of a wife. Café naïve — 東京 ✓ déjà vu.\n") * 6


def _tokenizer(byte_level: bool = True):
    """A BPE trained on TEXT: byte-level (GPT-2 style) or SentencePiece-style (metaspace, no byte fallback)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
        alphabet = []
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<unk>"],
                                                        initial_alphabet=alphabet))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")


def _save(model, path):
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=0, eos_token_id=1)
    return _save(transformers.LlamaForCausalLM(config), tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def softcapped_dir(tmp_path_factory):
    """Gemma 3 caps its logits with tanh (final_logit_softcapping): the blockwise head must too."""
    torch.manual_seed(1)
    config = transformers.Gemma3TextConfig(vocab_size=320, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16, max_position_embeddings=256, final_logit_softcapping=3.0,
                                           bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return _save(transformers.Gemma3ForCausalLM(config), tmp_path_factory.mktemp("tiny-gemma3"))


def _backend(path, **settings):
    model = resolve("tiny", ModelSpec(hf=str(path)), path.parent)
    backend = HfBackend(HfSettings(type="hf", **settings), model)
    backend.prepare()
    backend.load(context_tokens=64)
    return backend


def test_window_nll_equals_transformers_loss(llama_dir):
    """The mean NLL of a fully scored window is exactly the ``loss`` transformers computes for it."""
    backend = _backend(llama_dir, batch_size=3, logit_rows=7)
    tokens = backend.tokenizer.encode(TEXT)
    windows = rolling(tokens[:150], 64, backend.tokenizer.eos_id)  # 64, 64, 22 tokens: padded batch
    scores = backend.score(windows)
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32)
    for window, logprobs in zip(windows, scores, strict=True):
        ids = torch.from_numpy(window.input_ids.astype(np.int64))[None]
        # transformers shifts labels itself: label[t] is the token at t, predicted from position t - 1
        labels = torch.full_like(ids, -100)
        labels[0, 1:] = torch.from_numpy(window.labels[:-1].astype(np.int64))
        labels[labels < 0] = -100
        with torch.inference_mode():
            loss = model(ids, labels=labels).loss.item()
        last = int(window.labels[-1])  # the window's last target lies beyond its inputs: score it apart
        with torch.inference_mode():
            last_lp = torch.log_softmax(model(ids).logits[0, -1].double(), -1)[last].item()
        n_inner = len(logprobs) - 1
        assert -(logprobs.sum() - logprobs[-1]) / n_inner == pytest.approx(loss, rel=1e-5)
        assert logprobs[-1] == pytest.approx(last_lp, abs=1e-4)
    backend.close()


def test_blockwise_head_reproduces_softcapped_logits(softcapped_dir):
    backend = _backend(softcapped_dir, batch_size=2, logit_rows=5)
    tokens = backend.tokenizer.encode(TEXT)[:120]
    windows = sliding(tokens, 48, 16)
    scores = backend.score(windows)
    model = transformers.AutoModelForCausalLM.from_pretrained(softcapped_dir, dtype=torch.float32)
    for window, logprobs in zip(windows, scores, strict=True):
        with torch.inference_mode():
            logits = model(torch.from_numpy(window.input_ids.astype(np.int64))[None]).logits[0].double()
        assert logits.abs().max() <= 3.0  # the cap is in effect
        expected = torch.log_softmax(logits, -1)[window.scored_positions, window.targets].numpy()
        np.testing.assert_allclose(logprobs, expected, rtol=0, atol=2e-5)
    backend.close()


def test_full_logprobs_are_distributions_that_contain_the_scores(llama_dir):
    backend = _backend(llama_dir, batch_size=2, logit_rows=16)
    windows = chunked(backend.tokenizer.encode(TEXT)[:128], 64, backend.tokenizer.bos_id)
    scores = backend.score(windows)
    seen = 0
    for i, positions, rows in backend.logprobs(windows):
        assert rows.shape == (len(positions), backend.tokenizer.vocab_size)
        np.testing.assert_allclose(np.exp(rows.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)
        picked = rows[np.arange(len(positions)), windows[i].labels[positions]]
        offset = np.searchsorted(windows[i].scored_positions, positions[0])
        np.testing.assert_allclose(picked, scores[i][offset:offset + len(positions)], atol=1e-6)
        seen += len(positions)
    assert seen == sum(len(s) for s in scores)
    backend.close()


def test_log_softmax_rows_of_a_large_vocabulary_are_normalized():
    """Rows of 49,152 logits (SmolLM2's vocabulary) sum to 1 within 1e-6 in float32 (torch's own float32
    log_softmax on CPU is off by ~2e-5, as much as the KLD of two near-equal models) and match float64."""
    torch = pytest.importorskip("torch")
    from harness.backends.hf.backend import torch_log_softmax as log_softmax

    logits = torch.randn(64, 49152, generator=torch.Generator().manual_seed(0)) * 4
    ours = log_softmax(logits).double()
    np.testing.assert_allclose(ours.exp().sum(-1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(ours.numpy(), torch.log_softmax(logits.double(), -1).numpy(), atol=2e-6)


def test_tokenizer_bytes_cover_the_text_exactly(llama_dir):
    backend = _backend(llama_dir)
    tok = backend.tokenizer
    ids = tok.encode(TEXT)
    assert b"".join(tok.token_bytes(int(t)) for t in ids) == TEXT.encode()
    counts = tok.byte_counts(TEXT, ids)
    assert counts.sum() == len(TEXT.encode())
    np.testing.assert_array_equal(counts, [len(tok.token_bytes(int(t))) for t in ids])
    head = ids[:40]  # a prefix of the ids covers exactly the bytes its tokens spell
    assert tok.byte_counts(TEXT, head).sum() == len(b"".join(tok.token_bytes(int(t)) for t in head))
    assert tok.add_bos is False and tok.bos_id == 0
    backend.close()


def test_generate_is_greedy_streamed_and_exact_in_length(llama_dir):
    from harness.core.decoding import Decoding

    backend = _backend(llama_dir)
    prompt = backend.tokenizer.prompt("It is a truth")
    gen = backend.generate(prompt, Decoding(temperature=0), 12, ignore_eos=True)
    assert len(gen.tokens) == len(gen.times) == len(gen.max_prob) == 12 and gen.prefill_s is None
    ids, first_max_prob = list(prompt), None
    with torch.inference_mode():
        for _ in range(12):  # an independent greedy loop over full forwards
            logits = backend._model(torch.tensor([ids])).logits[0, -1]
            first_max_prob = first_max_prob or float(torch.softmax(logits.double(), -1).max())
            ids.append(int(logits.argmax()))
    assert gen.tokens == ids[len(prompt):]
    assert gen.max_prob[0] == 1.0 and gen.steps[0]["model_p"] == pytest.approx(first_max_prob, rel=1e-6)
    # the harness's sampler on the KV-cached logit steps makes the same tokens
    stepwise = backend.generate(prompt, Decoding(temperature=0), 12, ignore_eos=True, sampler="harness")
    assert stepwise.tokens == gen.tokens and stepwise.prefill_s > 0
    assert stepwise.steps[0]["model_p"] == pytest.approx(first_max_prob, rel=1e-5)
    backend.close()


def test_generate_batches_copies_of_the_prompt(llama_dir):
    from harness.core.decoding import Decoding

    backend = _backend(llama_dir)
    prompt = backend.tokenizer.prompt("It is a truth")
    one = backend.generate(prompt, Decoding(temperature=0), 6, ignore_eos=True, trace=False)
    three = backend.generate(prompt, Decoding(temperature=0), 6, ignore_eos=True, trace=False, batch_size=3)
    assert three.tokens == one.tokens and len(three.times) == 6
    backend.close()


def test_offset_byte_counts_cover_a_metaspace_text(tmp_path):
    """SentencePiece-style pieces add a prefix space the text lacks; offsets still count each byte once."""
    from harness.backends.hf.tokenizer import HfTokenizer

    tok = HfTokenizer(_tokenizer(byte_level=False))
    ids = tok.encode(TEXT)
    assert len(b"".join(tok.token_bytes(int(t)) for t in ids)) != len(TEXT.encode())
    counts = tok.byte_counts(TEXT, ids)
    assert counts.sum() == len(TEXT.encode()) and (counts >= 0).all()
    head = ids[:3]
    words = TEXT.split(" ")
    assert tok.byte_counts(TEXT, head).sum() == len(" ".join(words[:3]).encode())


def test_bf16_scores_stay_close_to_fp32(llama_dir):
    fp32, bf16 = _backend(llama_dir), _backend(llama_dir, dtype="bfloat16")
    windows = chunked(fp32.tokenizer.encode(TEXT)[:128], 64, None)
    a, b = (np.concatenate(x.score(windows)) for x in (fp32, bf16))
    assert not np.array_equal(a, b)  # it really ran in bfloat16
    assert math.exp(-b.mean()) == pytest.approx(math.exp(-a.mean()), rel=0.02)


@pytest.mark.bnb
def test_bnb_nf4_on_cpu_quantizes_and_scores(llama_dir):
    pytest.importorskip("bitsandbytes")
    quant = BnbQuantization(method="bnb", bits=4, quant_type="nf4")
    backend = _backend(llama_dir, quantization=quant)
    layer = backend._model.model.layers[0].mlp.up_proj
    assert type(layer).__name__ == "Linear4bit"
    fp32 = _backend(llama_dir)
    windows = chunked(backend.tokenizer.encode(TEXT)[:128], 64, None)
    q, f = (np.concatenate(b.score(windows)) for b in (backend, fp32))
    assert np.isfinite(q).all() and not np.allclose(q, f)
    assert backend._model.get_memory_footprint() < fp32._model.get_memory_footprint()
    # the weights counted, not the bytes they are packed in (two 4-bit weights a byte)
    assert backend.load(context_tokens=64).details["n_params"] == fp32.load(context_tokens=64).details["n_params"]


@pytest.mark.bnb
def test_nf4_mfu_is_measured_against_the_dtype_bitsandbytes_computes_in(llama_dir):
    """On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit layer at its first forward and computes it in
    bf16 whatever the compute dtype: its MFU must be against the bf16 GEMM ceiling (against fp32 it read 105%)."""
    pytest.importorskip("bitsandbytes")
    quant = BnbQuantization(method="bnb", bits=4, quant_type="nf4")
    backend = _backend(llama_dir, quantization=quant)
    backend.score(chunked(backend.tokenizer.encode(TEXT)[:64], 64, None))  # a forward: bitsandbytes repacks
    state = backend._model.model.layers[0].mlp.up_proj.weight.quant_state
    bf16_kernel = getattr(state, "packing_format_for_cpu", False)
    info = backend.load(context_tokens=64)
    assert info.shape.compute_dtype == ("bf16" if bf16_kernel else "fp32")
    assert info.details["matmul_dtype"] == ("bfloat16" if bf16_kernel else "float32")
    assert _backend(llama_dir).load(context_tokens=64).shape.compute_dtype == "fp32"


@pytest.mark.bnb
def test_quantization_settings_become_bitsandbytes_config():
    pytest.importorskip("bitsandbytes")
    nf4 = load_kwargs(HfSettings(type="hf", device="cuda", dtype="float16", quantization={
        "method": "bnb", "bits": 4, "quant_type": "fp4", "double_quant": True, "compute_dtype": "bfloat16"}))
    config = nf4["quantization_config"]
    assert nf4["device_map"] == "cuda" and nf4["dtype"] == torch.float16
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    int8 = load_kwargs(HfSettings(type="hf", quantization={"method": "bnb", "bits": 8}))["quantization_config"]
    assert int8.load_in_8bit and not int8.load_in_4bit
    default = load_kwargs(HfSettings(type="hf", dtype="bfloat16", quantization={"method": "bnb", "bits": 4}))
    assert default["quantization_config"].bnb_4bit_compute_dtype == torch.bfloat16


def test_four_bit_options_on_eight_bits_are_refused():
    with pytest.raises(ValueError, match="apply only to bits: 4"):
        BnbQuantization(method="bnb", bits=8, quant_type="nf4")


def test_quantization_defaults_resolve_to_the_same_settings():
    """A cell re-validates its dumped settings in the worker: defaults must survive the round trip."""
    for raw in ({"method": "bnb", "bits": 4}, {"method": "bnb", "bits": 8}):
        once = BnbQuantization.model_validate(raw)
        assert BnbQuantization.model_validate(once.model_dump(mode="json")) == once
    assert BnbQuantization(method="bnb", bits=4) == BnbQuantization(method="bnb", bits=4, quant_type="nf4",
                                                                    double_quant=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's skip")
def test_cuda_cell_without_a_gpu_is_unavailable(llama_dir):
    model = resolve("tiny", ModelSpec(hf=str(llama_dir)), llama_dir.parent)
    backend = HfBackend(HfSettings(type="hf", device="cuda", dtype="float16"), model)
    backend.prepare()
    with pytest.raises(Unavailable, match="no CUDA device"):
        backend.load(context_tokens=64)


def test_window_labels_match_the_padding_free_forward(llama_dir):
    """A short window batched beside full ones (right padding) scores as it does alone."""
    backend = _backend(llama_dir, batch_size=2)
    tokens = backend.tokenizer.encode(TEXT)
    long = Window(tokens[:64], np.concatenate([tokens[1:64], [-1]]))
    short = Window(tokens[:20], np.concatenate([tokens[1:20], [-1]]))
    together = backend.score([long, short])
    alone = backend.score([short])
    np.testing.assert_allclose(together[1], alone[0], atol=1e-5)
    backend.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's skip")
@pytest.mark.bnb
def test_suite_runs_hf_cells_and_skips_cuda_with_its_reason(llama_dir, tmp_path):
    pytest.importorskip("bitsandbytes")
    import json


    suite = {
        "name": "hf-tiny",
        "models": {"tiny": {"hf": str(llama_dir)}},
        "backends": {"fp32": {"type": "hf", "dtype": "float32", "n_threads": 1},
                     "int8": {"type": "hf", "n_threads": 1, "quantization": {"method": "bnb", "bits": 8}},
                     "fp16-cuda": {"type": "hf", "dtype": "float16", "device": "cuda"}},
        "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"ppl": {"type": "perplexity", "dataset": "docs", "window": "rolling", "n_ctx": 64,
                          "max_tokens": 512}},
        "matrix": [{"model": "tiny", "backend": ["fp32", "int8", "fp16-cuda"], "task": "ppl"}],
    }
    _, table = run_suite(tmp_path, suite)
    cuda = table[table.backend == "fp16-cuda"]
    assert cuda.status.tolist() == ["skipped"] and "no CUDA device" in cuda.reason.iloc[0]
    fp32 = table[table.backend == "fp32"].set_index("metric")
    assert fp32.loc["tokens_scored", "value"] == 512 and fp32.loc["token_ppl", "value"] > 1
    model = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    assert fp32.loc["model_bytes", "value"] == model.get_memory_footprint()
    params = json.loads(fp32.params.iloc[0])
    assert params["resolved"]["backend"]["dtype"] == "float32"
    int8 = table[table.backend == "int8"].set_index("metric")
    assert int8.status.iloc[0] == "ok", int8.reason.iloc[0]
    assert 0 < int8.loc["model_bytes", "value"] < fp32.loc["model_bytes", "value"]


def test_kv_cached_steps_use_no_deprecated_keyword(llama_dir):
    """transformers 5.x renamed ``past_key_values`` to ``cache`` and drops the old name in 5.40: the
    logit steps must not lean on it (a FutureWarning here is the early notice)."""
    import warnings

    from harness.core.decoding import Decoding

    backend = _backend(llama_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        gen = backend.generate(backend.tokenizer.prompt("It is a truth"), Decoding(temperature=0), 4,
                               sampler="harness", ignore_eos=True)
    assert len(gen.tokens) == 4


def _quantization_state_bytes(model, double_quant: bool) -> int:
    """bitsandbytes' quantization state by arithmetic on the layers' shapes (blocks of 64 weights): per 4-bit
    layer an fp32 absmax per block and a 16-entry fp32 code book; with double quantization the absmax in 8 bits,
    plus an fp32 offset, an fp32 absmax per 256 blocks and a 256-entry fp32 code book; per int8 layer an fp32
    scale per output row (SCB)."""
    total = 0
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            blocks = math.ceil(module.in_features * module.out_features / 64)
            total += 16 * 4 + (blocks + 4 + math.ceil(blocks / 256) * 4 + 256 * 4 if double_quant else blocks * 4)
        elif type(module).__name__ == "Linear8bitLt":
            total += module.out_features * 4
    return total


@pytest.mark.bnb
def test_bnb_model_bytes_count_the_quantization_state(llama_dir):
    """get_memory_footprint() misses absmax and code books (NF4 and double-quantized NF4 read the same):
    model_bytes adds them, equal to their count by arithmetic."""
    pytest.importorskip("bitsandbytes")
    sizes = {}
    for name, quant in {"nf4": {"bits": 4, "quant_type": "nf4"}, "fp4": {"bits": 4, "quant_type": "fp4"},
                        "nf4-dq": {"bits": 4, "quant_type": "nf4", "double_quant": True},
                        "int8": {"bits": 8}}.items():
        model = resolve("tiny", ModelSpec(hf=str(llama_dir)), llama_dir.parent)
        backend = HfBackend(HfSettings(type="hf", dtype="float16", quantization={"method": "bnb", **quant}), model)
        backend.prepare()
        info = backend.load(context_tokens=64)
        state = _quantization_state_bytes(backend._model, quant.get("double_quant", False))
        assert state > 0
        assert info.model_bytes == backend._model.get_memory_footprint() + state, name
        sizes[name] = info.model_bytes
        backend.close()
    assert sizes["nf4"] == sizes["fp4"]  # the same packing, blocks and code-book size: only the code differs
    # double quantization saves 3 bytes a block of 64 weights but adds a 1 KiB code book a layer: on layers
    # this small it costs more (SmolLM2's 5k-14k blocks a layer save 5 MB: benchmarks/cuda_check.py)
    assert sizes["nf4"] < sizes["nf4-dq"] < sizes["int8"]


def test_loaded_dtype_is_the_one_asked_for(llama_dir):
    from harness.backends.hf.backend import check_loaded_dtype

    backend = _backend(llama_dir, dtype="bfloat16")
    assert backend._head.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="loaded the weights as float32, not the float16"):
        check_loaded_dtype(torch.zeros(2), "float16", transformers.__version__)


def test_static_kv_cache_gives_the_dynamic_caches_tokens_and_logits(llama_dir):
    """``cache_implementation: static`` changes where the KV cache lives, not what the model computes:
    transformers' generate and the harness's logit steps give the dynamic cache's tokens and logits."""
    from harness.core.decoding import Decoding

    dynamic, static = _backend(llama_dir), _backend(llama_dir, cache_implementation="static")
    prompt = dynamic.tokenizer.prompt("It is a truth")
    native = [b.generate(prompt, Decoding(temperature=0), 10, ignore_eos=True) for b in (dynamic, static)]
    assert native[0].tokens == native[1].tokens and len(native[1].times) == 10
    np.testing.assert_allclose(native[1].steps[3]["model_p"], native[0].steps[3]["model_p"], rtol=1e-5)
    steps = [b.logit_steps(prompt, 4) for b in (dynamic, static)]
    want, got = (next(s) for s in steps)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for token in native[0].tokens[:3]:
        want, got = (s.send(token) for s in steps)
        np.testing.assert_allclose(got, want, atol=1e-5)
    dynamic.close()
    static.close()


def test_compile_needs_the_static_cache_and_new_keys_keep_cell_ids():
    with pytest.raises(ValueError, match="cache_implementation: static"):
        HfSettings(type="hf", compile=True)
    assert HfSettings(type="hf", compile=True, cache_implementation="static").compile
    # left out of the serialized settings at their defaults: existing hf cells keep their ids
    assert HfSettings(type="hf").model_dump() == HfSettings(type="hf", cache_implementation=None,
                                                            compile=False).model_dump()
    assert "compile" not in HfSettings(type="hf").model_dump()


@pytest.mark.compile
def test_compiled_decode_gives_the_uncompiled_tokens(llama_dir):
    """``compile: true``: transformers compiles the decode step (the first generation pays for it) and the
    compiled model chooses the same greedy tokens as the eager one."""
    from harness.core.decoding import Decoding

    eager, compiled = _backend(llama_dir), _backend(llama_dir, cache_implementation="static", compile=True)
    prompt = eager.tokenizer.prompt("It is a truth")
    want = eager.generate(prompt, Decoding(temperature=0), 10, ignore_eos=True, trace=False).tokens
    for _ in range(2):  # the second call runs the graph compiled by the first
        assert compiled.generate(prompt, Decoding(temperature=0), 10, ignore_eos=True, trace=False).tokens == want
    eager.close()
    compiled.close()
