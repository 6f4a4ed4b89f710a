"""Hugging Face transformers models (fp32/bf16/fp16 on CPU or CUDA) and their bitsandbytes quantization.

Sources: an HF model directory, a hub repo id (fetched by :mod:`harness.sources.models` when online), a model
the harness trained (``train:``, an HF directory in the cache: :mod:`harness.sources.train_llama`), or a GGUF
file, which is first turned into a plain HF directory once (:mod:`harness.sources.gguf_to_hf`) because
bitsandbytes cannot quantize a GGUF-loaded model.

Scoring runs the model body once per batch of windows and applies the output head only to scored
positions, ``logit_rows`` at a time: a whole window's logits are never held (512 positions of a
49k-vocabulary model are 100 MB of fp32 logits per window, a batch of them several GB).
"""

from __future__ import annotations

import inspect
import logging
import time
import warnings
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from harness.backends.base import Backend, BackendSettings
from harness.backends.hf.tokenizer import HfTokenizer
from harness.backends.registry import register_backend
from harness.core.capabilities import BATCH, BEAM, GENERATE, LOGITS, SCORE, SEED
from harness.core.decoding import Decoding, Generation
from harness.core.errors import Unavailable, require
from harness.core.memory import CudaMemory
from harness.core.roofline import ModelShape
from harness.core.settings import StrictModel, new_key
from harness.core.types import LoadInfo, Window

#: torch dtype name -> the probe's GEMM dtype key
COMPUTE_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def weight_count(model) -> int:
    """The model's weights as its source had them: its parameters, plus the weights a GPTQ or AWQ layer
    (GPT-QModel's) holds packed in an integer buffer, ``qweight``, which ``num_parameters`` does not count."""
    packed = sum(module.in_features * module.out_features for module in model.modules()
                 if "qweight" in getattr(module, "_buffers", {}))
    return int(model.num_parameters()) + packed


def hf_shape(model, activation_dtype) -> ModelShape:
    """The model's shape from its config; the KV cache runs in the activations' dtype (the output head's:
    bitsandbytes keeps it unquantized), the matmuls in :func:`matmul_dtype`."""
    config = model.config.get_text_config()
    heads = config.num_attention_heads
    return ModelShape(n_params=weight_count(model), n_layers=config.num_hidden_layers, n_heads=heads,
                      n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                      kv_dtype_bytes=activation_dtype.itemsize,
                      compute_dtype=COMPUTE_DTYPES[str(matmul_dtype(model, activation_dtype)).removeprefix("torch.")])


def matmul_dtype(model, activation_dtype):
    """The dtype the model's matmuls run in, what its MFU is measured against: the activations', except that
    bitsandbytes (0.49+) runs a 4-bit layer on a CPU with AVX512-BF16 through a fused bf16 kernel, whatever
    its compute dtype (the layer marks it ``support_avx512bf16_for_cpu``)."""
    import torch

    on_cpu = model.get_output_embeddings().weight.device.type == "cpu"
    if on_cpu and any(getattr(m, "support_avx512bf16_for_cpu", False) for m in model.modules()):
        return torch.bfloat16
    return activation_dtype

Dtype = Literal["float32", "bfloat16", "float16"]


class BnbQuantization(StrictModel):
    """bitsandbytes quantization applied while loading (``quantization:`` of an hf backend).

    The 4-bit options are None for 8 bits and filled with their defaults for 4 bits, so the resolved
    settings (and the cell id) read the same whether a default was written out or not."""

    method: Literal["bnb"]
    bits: Literal[4, 8]
    quant_type: Literal["nf4", "fp4"] | None = Field(None, description="4-bit only; default nf4")
    double_quant: bool | None = Field(None, description="4-bit only: quantize the quantization constants too; "
                                      "default false")
    compute_dtype: Dtype | None = Field(None, description="4-bit only; default: the backend's dtype")

    @model_validator(mode="after")
    def _four_bit_options(self):
        if self.bits == 8:
            if any(v is not None for v in (self.quant_type, self.double_quant, self.compute_dtype)):
                raise ValueError("quant_type, double_quant and compute_dtype apply only to bits: 4")
        else:
            self.quant_type = self.quant_type or "nf4"
            self.double_quant = bool(self.double_quant)
        return self


class HfSettings(BackendSettings):
    type: Literal["hf"]
    dtype: Dtype = Field("float32", description="weights and activations (non-quantized layers)")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="auto: accelerate's device_map")
    attn_implementation: str | None = Field(None, description="eager, sdpa, flash_attention_2, ...; "
                                            "default: transformers' choice")
    batch_size: int = Field(4, ge=1, description="windows per forward pass when scoring")
    logit_rows: int = Field(256, ge=1, description="positions per output-head block (bounds logit memory)")
    n_threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all this process may use")
    quantization: BnbQuantization | None = None
    cache_implementation: Literal["dynamic", "static"] | None = new_key(
        None, description="the KV cache generation runs on: static preallocates prompt + new tokens once "
        "(fixed shapes, which compile needs); default: transformers' dynamic cache, grown every step")
    compile: bool = new_key(False, description="torch.compile the decode step of transformers' generate "
                            "(its CompileConfig, on every device); needs cache_implementation: static and a "
                            "C++ compiler; the first generation of a cell compiles, for minutes on a CPU")

    @model_validator(mode="after")
    def _compile_needs_static_cache(self):
        if self.compile and self.cache_implementation != "static":
            raise ValueError("compile: true needs cache_implementation: static (transformers compiles generate's "
                             "decode step only over the static cache's fixed shapes)")
        return self


def load_kwargs(settings: HfSettings) -> dict:
    """``from_pretrained`` arguments for these settings (no device is touched here)."""
    import torch

    dtype = getattr(torch, settings.dtype)
    kwargs: dict = {"dtype": dtype, "device_map": settings.device}
    if settings.attn_implementation is not None:
        kwargs["attn_implementation"] = settings.attn_implementation
    q = settings.quantization
    if q is not None:
        from transformers import BitsAndBytesConfig

        if q.bits == 4:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type=q.quant_type, bnb_4bit_use_double_quant=q.double_quant,
                bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype or settings.dtype))
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    return kwargs


def load_model(directory: Path, derived: dict | None, kwargs: dict):
    """transformers' model in ``directory``; a quantized model the harness derived (``derived``: its record) as its
    method loads it (quanto and hqq with their own loaders)."""
    if derived is None:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(directory, **kwargs)
    from harness.sources.quantization import parse_quantize

    return parse_quantize(derived["method"]).load(directory, kwargs)


class _TokenClock:
    """A transformers streamer: ``put`` gets the prompt once, then each step's new tokens."""

    def __init__(self, out: Generation, on_token: Callable[[int], None] | None):
        self.out, self.on_token, self.prompt_seen, self.start = out, on_token, False, 0.0

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.out.times.append(time.perf_counter() - self.start)
        if self.on_token is not None:
            self.on_token(int(value.reshape(-1)[0]))

    def end(self) -> None:
        pass


@register_backend("hf")
class HfBackend(Backend):
    settings_class = HfSettings
    capabilities = frozenset({SCORE, LOGITS, GENERATE, SEED, BEAM, BATCH})
    model_kinds = frozenset({"hf", "gguf", "train"})
    #: transformers' ``_get_logits_processor`` order
    native_sampler_order = ("repetition penalty (the whole sequence: no window) -> temperature -> top-k -> top-p "
                            "-> min-p -> draw")
    dependencies = (("torch", "hf"), ("transformers", "hf"), ("accelerate", "hf"))
    settings: HfSettings

    @classmethod
    def dependencies_for(cls, settings: dict) -> tuple[tuple[str, str], ...]:
        if settings.get("quantization"):
            return cls.dependencies + (("bitsandbytes", "bnb"),)
        return cls.dependencies

    @classmethod
    def gpus(cls, settings: HfSettings) -> int:
        return int(settings.device == "cuda")  # auto takes a GPU where the node has one, none is reserved

    def prepare(self) -> dict:
        """A GGUF source becomes an HF directory first, in a process of its own (not measured); the params
        say which pre-tokenizer its tokenizer was given."""
        self._dir, materialize_s = Path(self.model.path), 0.0
        if self.model.kind != "gguf":
            return {"hf_dir": str(self._dir), "materialize_s": materialize_s}
        from harness.sources.gguf_to_hf import ensure_materialized, tokenizer_record

        self._dir, materialize_s = ensure_materialized(self.model.path, self.model.sha256)
        return {"hf_dir": str(self._dir), "materialize_s": materialize_s, "gguf_tokenizer": tokenizer_record(self._dir)}

    def load(self, context_tokens: int) -> LoadInfo:
        torch = require("torch", "hf", "the hf backend")
        transformers = require("transformers", "hf", "the hf backend")
        s = self.settings
        if s.device == "cuda" and not torch.cuda.is_available():
            raise Unavailable(f"device cuda: no CUDA device visible to torch {torch.__version__}")
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        # a quantized HF model the harness derived (a GGUF rung's record is that of a file materialized in full)
        derived = self.model.quantization if self.model.kind != "gguf" else None
        if s.quantization is not None and derived is not None:
            raise ValueError(f"quantization: {self.model.source} is quantized already; bitsandbytes quantizes a "
                             "full-precision model while loading it")
        if s.quantization is not None:
            versions["bitsandbytes"] = require("bitsandbytes", "bnb", "quantization: {method: bnb}").__version__
            # LLM.int8 casts activations to float16 and logs that at every matmul: once is in the docs
            logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
        if s.n_threads is not None:
            torch.set_num_threads(s.n_threads)
        self._torch = torch
        self._cuda = CudaMemory() if s.device != "cpu" and torch.cuda.is_available() else None
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tokenizer = transformers.AutoTokenizer.from_pretrained(self._dir)
            self._model = load_model(self._dir, derived, load_kwargs(s))
        self._model.eval()
        load_s = time.perf_counter() - start
        self.tokenizer = HfTokenizer(tokenizer)
        config = self._model.config
        for scaling in ("logit_scale", "logits_scaling"):
            if getattr(config, scaling, None) not in (None, 1, 1.0):
                raise ValueError(f"{config.model_type} scales its logits ({scaling}); the hf backend's "
                                 "blockwise head does not reproduce that")
        self._softcap = getattr(config, "final_logit_softcapping", None)
        self._body = self._model.base_model
        self._head = self._model.get_output_embeddings()
        self._device = self._head.weight.device
        check_loaded_dtype(self._head.weight, s.dtype, transformers.__version__)
        return LoadInfo(load_s=load_s, model_bytes=weight_bytes(self._model), details={
            "architecture": type(self._model).__name__,
            # transformers counts a bitsandbytes 4-bit tensor's weights, not its packed bytes (bits/weight)
            "n_params": weight_count(self._model),
            "dtype": s.dtype, "device": str(self._device), "attn_implementation": config._attn_implementation,
            "quantization": s.quantization.model_dump() if s.quantization else None,
            "matmul_dtype": str(matmul_dtype(self._model, self._head.weight.dtype)).removeprefix("torch."),
            "batch_size": s.batch_size, "n_threads": torch.get_num_threads(), "add_bos": self.tokenizer.add_bos,
            "bytes_on_disk": sum(p.stat().st_size for p in Path(self._dir).rglob("*") if p.is_file()),
            **versions,
        }, shape=hf_shape(self._model, self._head.weight.dtype))

    def _batches(self, windows: Sequence[Window]) -> Iterator[tuple[list[int], object]]:
        """Window indices and the body's last hidden state (batch, length, hidden) of each batch."""
        torch, size = self._torch, self.settings.batch_size
        for first in range(0, len(windows), size):
            group = list(range(first, min(first + size, len(windows))))
            lengths = [len(windows[i].input_ids) for i in group]
            ids = np.zeros((len(group), max(lengths)), dtype=np.int64)
            for row, i in enumerate(group):
                ids[row, :lengths[row]] = windows[i].input_ids
            kwargs = {"input_ids": torch.from_numpy(ids).to(self._device)}
            if min(lengths) != max(lengths):  # right padding: positions stay 0.. for every row
                mask = np.arange(ids.shape[1])[None, :] < np.array(lengths)[:, None]
                kwargs["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self._device)
            with torch.inference_mode():
                hidden = self._body(**kwargs, use_cache=False).last_hidden_state
            yield group, hidden

    def _logprob_blocks(self, windows: Sequence[Window]) -> Iterator[tuple[int, object, np.ndarray]]:
        """(window index, float32 log-softmax rows [n, vocab] as a torch tensor, the rows' positions),
        at most ``logit_rows`` scored positions at a time."""
        torch, rows = self._torch, self.settings.logit_rows
        for group, hidden in self._batches(windows):
            for row, i in enumerate(group):
                positions = windows[i].scored_positions
                for start in range(0, len(positions), rows):
                    part = positions[start:start + rows]
                    with torch.inference_mode():
                        logits = self._head(hidden[row, torch.from_numpy(part).to(self._device)]).float()
                        if self._softcap:
                            logits = torch.tanh(logits / self._softcap) * self._softcap
                        yield i, torch_log_softmax(logits), part

    def score(self, windows: Sequence[Window]) -> list[np.ndarray]:
        torch = self._torch
        parts: list[list[np.ndarray]] = [[] for _ in windows]
        for i, logprobs, positions in self._logprob_blocks(windows):
            targets = torch.from_numpy(windows[i].labels[positions].astype(np.int64)).to(logprobs.device)
            parts[i].append(logprobs.gather(1, targets[:, None])[:, 0].double().cpu().numpy())
        return [np.concatenate(p) if p else np.zeros(0) for p in parts]

    def logprobs(self, windows: Sequence[Window]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Full-vocabulary log-probabilities at scored positions, block by block (entropy, KLD)."""
        for i, logprobs, positions in self._logprob_blocks(windows):
            yield i, positions, logprobs.cpu().numpy()

    def logit_steps(self, prompt_ids: np.ndarray, max_new_tokens: int) -> Generator[np.ndarray, int, None]:
        """One forward pass over the prompt, then one per token on the KV cache; only the last
        position's logits are computed (``logits_to_keep``). The cache object is updated in place by each
        pass; transformers renamed its keyword (``past_key_values`` -> ``cache``, the old name goes in
        5.40), so the model's own signature says which to use. ``cache_implementation: static`` preallocates
        the prompt and every new token; ``compile`` applies to transformers' generate only."""
        torch = self._torch
        from transformers import DynamicCache, StaticCache

        ids = torch.from_numpy(np.asarray(prompt_ids, dtype=np.int64)[None, :]).to(self._device)
        keyword = "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"
        if self.settings.cache_implementation == "static":
            cache = StaticCache(config=self._model.config, max_cache_len=len(prompt_ids) + max_new_tokens)
        else:
            cache = DynamicCache()
        while True:
            with torch.inference_mode():
                result = self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{keyword: cache})
            token = yield result.logits[0, -1].float().cpu().numpy()
            ids = torch.tensor([[int(token)]], device=self._device)

    def generate_native(self, prompt_ids: np.ndarray, decoding: Decoding, max_new_tokens: int, *,
                        ignore_eos: bool, batch_size: int, trace: bool,
                        on_token: Callable[[int], None] | None) -> Generation:
        """transformers' own ``generate`` (what its users get), timed by a streamer that sees each new
        token as it is chosen. The prompt and the first token come out of one forward pass, so the
        prefill is not told apart from the time to first token. Its repetition penalty covers the
        whole sequence: transformers has no window."""
        torch, d = self._torch, decoding
        ids = torch.from_numpy(np.tile(np.asarray(prompt_ids, dtype=np.int64), (batch_size, 1))).to(self._device)
        sampling = d.temperature > 0 and d.beams == 1
        kwargs = {"max_new_tokens": max_new_tokens, "do_sample": sampling, "num_beams": d.beams,
                  "repetition_penalty": d.repetition_penalty, "pad_token_id": self.tokenizer.eos_id,
                  "attention_mask": torch.ones_like(ids)}
        if ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        kwargs.update(self._generate_cache_kwargs())
        if sampling:
            kwargs.update(temperature=d.temperature, top_k=d.top_k or 0, top_p=d.top_p or 1.0, min_p=d.min_p)
            torch.manual_seed(d.seed)
        else:  # the model's generation_config may carry sampling defaults: greedy means greedy
            kwargs.update(temperature=None, top_k=None, top_p=None)
        traced = trace and d.beams == 1
        if traced:  # raw logits (the model's distribution) and processed scores (the one drawn from)
            kwargs.update(output_logits=True, output_scores=True, return_dict_in_generate=True)
        out = Generation()
        clock = _TokenClock(out, on_token) if d.beams == 1 else None  # beams stream no chosen tokens
        start = time.perf_counter()
        if clock is not None:
            clock.start = start
        with torch.inference_mode():
            result = self._model.generate(ids, streamer=clock, **kwargs)
        sequences = result.sequences if traced else result
        out.tokens = sequences[0, len(prompt_ids):].tolist()
        if clock is None:
            out.times = [time.perf_counter() - start] * len(out.tokens)
        if traced:
            for token, raw, scores in zip(out.tokens, result.logits, result.scores, strict=True):
                if sampling:
                    sampled = torch.softmax(scores[0].double(), dim=-1).cpu().numpy()
                else:
                    sampled = np.zeros(raw.shape[-1])
                    sampled[token] = 1.0
                out.record_step(token, raw[0].float().cpu().numpy(), sampled)
        eos = self.tokenizer.eos_id
        if not ignore_eos and eos in out.tokens:  # generate pads after EOS; the text stops there
            out.tokens = out.tokens[:out.tokens.index(eos)]
        out.text = self.tokenizer.text(out.tokens)
        return out

    def _generate_cache_kwargs(self) -> dict:
        """``generate`` arguments for the cache settings. transformers compiles the decode step itself when
        the cache is static and a CompileConfig allows the device (by default only accelerators)."""
        s, kwargs = self.settings, {}
        if s.cache_implementation is not None:
            kwargs["cache_implementation"] = s.cache_implementation
        if s.compile:
            from transformers import CompileConfig

            config = CompileConfig(mode="default" if self._device.type == "cpu" else "reduce-overhead")
            config._compile_all_devices = True
            kwargs["compile_config"] = config
        return kwargs

    def device_memory(self) -> dict[str, float | None]:
        return self._cuda.peaks() if self._cuda is not None else {}

    def close(self) -> None:
        self._model = self._body = self._head = None
        if self._cuda is not None:
            self._torch.cuda.empty_cache()


def check_loaded_dtype(weight, dtype: str, transformers_version: str) -> None:
    """The output head (never quantized by bitsandbytes) holds the dtype the cell asked for: a transformers
    that ignored ``dtype=`` would give a "float16" cell float32 numbers."""
    loaded = str(weight.dtype).removeprefix("torch.")
    if loaded != dtype:
        raise ValueError(f"transformers {transformers_version} loaded the weights as {loaded}, not the {dtype} "
                         "asked for (from_pretrained's dtype= needs transformers >= 4.56)")


def weight_bytes(model) -> int:
    """The weights' bytes in memory: ``get_memory_footprint`` (parameters and buffers) plus the quantization
    state it misses: bitsandbytes' hanging off the parameters (a 4-bit weight's absmax per block and code book,
    with double quantization the 8-bit absmax, its own absmax, code book and offset; an int8 weight's row
    scales, SCB), hqq's scales and zero points (in its layers' ``meta``). A torchao or quanto weight (a tensor
    subclass) reports its float dtype: it is counted by the plain tensors it holds instead. Each tensor once."""
    seen, state_bytes = set(), 0

    def count(tensor) -> int:
        key = (tensor.device, tensor.data_ptr())
        if key in seen:
            return 0
        seen.add(key)
        return tensor.numel() * tensor.element_size()

    for param in model.parameters():
        for tensor in _quantization_state(param):
            state_bytes += count(tensor)
        inner = _inner_tensors(param.data)
        if inner is not None:  # what get_memory_footprint counted, replaced by what is held
            state_bytes += sum(count(t) for t in inner) - param.numel() * param.element_size()
    for module in model.modules():
        meta = getattr(module, "meta", None)
        if isinstance(meta, dict) and hasattr(module, "W_q"):  # hqq's HQQLinear
            state_bytes += sum(count(t) for t in meta.values() if hasattr(t, "data_ptr"))
    return int(model.get_memory_footprint()) + state_bytes


def _inner_tensors(tensor) -> list | None:
    """The plain tensors a tensor subclass holds (PyTorch's ``__tensor_flatten__`` protocol); None for a plain one."""
    if not hasattr(type(tensor), "__tensor_flatten__"):
        return None
    names, _ = tensor.__tensor_flatten__()
    plain = []
    for name in names:
        held = getattr(tensor, name)
        plain += _inner_tensors(held) or [held]
    return plain


def _quantization_state(param) -> Iterator:
    state = getattr(param, "quant_state", None)  # bitsandbytes Params4bit
    while state is not None:
        yield from (t for t in (state.absmax, state.code, state.offset) if t is not None)
        state = state.state2 if state.nested else None
    scb = getattr(param, "SCB", None)  # bitsandbytes Int8Params
    if scb is not None:
        yield scb


def torch_log_softmax(logits):
    """Row-wise log-softmax of float32 logits, normalized to ~3e-7: torch's fused float32 log_softmax on CPU
    leaves rows of a 49k vocabulary summing to exp(±2e-5), which biases a KL-divergence between two
    near-equal models by as much as the divergence itself. Max-shifted, then torch.sum's cascaded sum."""
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()
