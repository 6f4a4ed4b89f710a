"""GGUF models in-process through llama-cpp-python's C API.

Scoring goes through ``llama_decode`` directly rather than the high-level ``Llama`` class: like
llama-perplexity, it packs several windows into one batch as parallel sequences and asks for logits
only at scored positions, and it turns each decode's logits into log-probabilities straight away, so
a whole text's logits never sit in memory (``Llama(logits_all=True)`` holds n_ctx × n_vocab floats).
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np
from pydantic import Field

from harness.backends.base import Backend, BackendSettings
from harness.backends.llamacpp.sampler import LlamaSampler
from harness.backends.llamacpp.tokenizer import LlamaCppTokenizer, llama_lib
from harness.backends.registry import register_backend
from harness.core.capabilities import GENERATE, LOGITS, SCORE, SEED
from harness.core.cpus import available_cpus
from harness.core.decoding import Decoding, Generation
from harness.core.roofline import metadata_shape
from harness.core.types import LoadInfo, Window
from harness.sources.gguf_rewrite import tensor_types


class LlamaCppSettings(BackendSettings):
    type: Literal["llamacpp"]
    n_ctx: int | None = Field(None, ge=1, description="max context per sequence; default: what the task needs")
    n_threads: int | None = Field(None, ge=1, description="default: all CPUs this process may use")
    n_batch: int = Field(2048, ge=1, description="tokens per llama_decode call (llama.cpp's -b)")
    n_ubatch: int = Field(512, ge=1, description="physical micro-batch (llama.cpp's -ub)")
    flash_attn: bool = False
    n_gpu_layers: int = Field(0, ge=-1, description="layers offloaded to the GPU; -1 = all")


#: windows decoded side by side at most (llama.cpp allows 256 sequences; short windows would ask for more)
MAX_PARALLEL_SEQUENCES = 64


@register_backend("llamacpp")
class LlamaCppBackend(Backend):
    settings_class = LlamaCppSettings
    capabilities = frozenset({SCORE, LOGITS, GENERATE, SEED})
    #: how llama.cpp's common sampler orders its chain (common/common.h), which :class:`LlamaSampler` builds
    native_sampler_order = ("repetition penalty (last repetition_window tokens) -> top-k -> top-p -> min-p -> "
                            "temperature -> draw")
    model_kinds = frozenset({"gguf"})
    dependencies = (("llama_cpp", "gguf"), ("gguf", "gguf"))
    settings: LlamaCppSettings

    @classmethod
    def gpus(cls, settings: LlamaCppSettings) -> int:
        return int(settings.n_gpu_layers != 0)

    def load(self, context_tokens: int) -> LoadInfo:
        lib = llama_lib()
        s = self.settings
        if s.n_ctx is not None and context_tokens > s.n_ctx:
            raise ValueError(f"the task needs {context_tokens} tokens of context, backend n_ctx is {s.n_ctx}")
        self.seq_ctx = context_tokens
        self.n_seq = max(1, min(s.n_batch // context_tokens, MAX_PARALLEL_SEQUENCES))
        self.threads = s.n_threads or available_cpus()
        start = time.perf_counter()
        lib.llama_backend_init()
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = s.n_gpu_layers
        self._model = lib.llama_model_load_from_file(str(self.model.path).encode(), mparams)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {self.model.path}")
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.n_seq * self.seq_ctx
        cparams.n_batch = min(s.n_batch, cparams.n_ctx)
        cparams.n_ubatch = min(s.n_ubatch, cparams.n_batch)
        cparams.n_seq_max = self.n_seq
        cparams.n_threads = cparams.n_threads_batch = self.threads
        cparams.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if s.flash_attn
                                   else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        self._ctx = lib.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            raise RuntimeError("llama.cpp could not create a context")
        load_s = time.perf_counter() - start
        self._lib = lib
        self.n_batch = cparams.n_batch
        self.tokenizer = LlamaCppTokenizer(lib, self._model)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="logsoftmax")
        desc = ctypes.create_string_buffer(256)
        lib.llama_model_desc(self._model, desc, len(desc))
        return LoadInfo(load_s=load_s, model_bytes=int(lib.llama_model_size(self._model)), details={
            "model_desc": desc.value.decode(errors="replace"),
            "n_params": int(lib.llama_model_n_params(self._model)),
            "bytes_on_disk": self.model.bytes_on_disk, "tensor_types": tensor_types(self.model.path),
            "n_ctx_seq": self.seq_ctx, "n_seq": self.n_seq, "n_batch": self.n_batch,
            "n_ubatch": cparams.n_ubatch, "n_threads": self.threads, "flash_attn": s.flash_attn,
            "n_gpu_layers": s.n_gpu_layers, "add_bos": self.tokenizer.add_bos,
            "llama_cpp_python": getattr(lib, "__version__", "?"),
            "system_info": lib.llama_print_system_info().decode(errors="replace").strip(),
        }, shape=metadata_shape(self._meta, int(lib.llama_model_n_params(self._model)), compute_dtype="fp32",
                                kv_dtype_bytes=2))  # llama.cpp's KV cache: f16

    def _meta(self, key: str) -> str | None:
        """One GGUF metadata value of the loaded model, as llama.cpp holds it."""
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> np.ndarray | None:
        """One llama_decode over (token, pos, seq, wants_logits) entries; the logits rows it produced."""
        lib, b = self._lib, self._batch
        n = len(entries)
        tokens, pos, seqs, flags = (np.fromiter((e[i] for e in entries), dtype=np.int32, count=n)
                                    for i in range(4))
        np.ctypeslib.as_array(b.token, shape=(self.n_batch,))[:n] = tokens
        np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))[:n] = pos
        np.ctypeslib.as_array(b.n_seq_id, shape=(self.n_batch,))[:n] = 1
        np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))[:n] = flags
        for i in range(n):
            b.seq_id[i][0] = int(seqs[i])
        b.n_tokens = n
        rc = lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        n_out = int(flags.sum())
        if n_out == 0:
            return None
        vocab = self.tokenizer.vocab_size
        return np.ctypeslib.as_array(lib.llama_get_logits(self._ctx), shape=(n_out, vocab))

    def score(self, windows: Sequence[Window]) -> list[np.ndarray]:
        longest = max(len(w.input_ids) for w in windows)
        if longest > self.seq_ctx:
            raise ValueError(f"a window of {longest} tokens exceeds the loaded context of {self.seq_ctx}")
        results: list[np.ndarray] = []
        memory = self._lib.llama_get_memory(self._ctx)
        for first in range(0, len(windows), self.n_seq):
            group = windows[first:first + self.n_seq]
            self._lib.llama_memory_clear(memory, True)
            entries = [(int(tok), p, seq, bool(w.labels[p] >= 0))
                       for seq, w in enumerate(group) for p, tok in enumerate(w.input_ids)]
            targets = np.concatenate([w.targets for w in group])
            logprobs = []
            done = 0
            for start in range(0, len(entries), self.n_batch):
                logits = self._decode(entries[start:start + self.n_batch])
                if logits is not None:
                    logprobs.append(target_logprobs(logits, targets[done:done + len(logits)], self._pool))
                    done += len(logits)
            flat = np.concatenate(logprobs)
            splits = np.cumsum([len(w.targets) for w in group])[:-1]
            results.extend(np.split(flat, splits))
        return results

    def logprobs(self, windows: Sequence[Window]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Full-vocabulary log-probabilities at each window's scored positions, one decode at a time."""
        memory = self._lib.llama_get_memory(self._ctx)
        for index, w in enumerate(windows):
            if len(w.input_ids) > self.seq_ctx:
                raise ValueError(f"a window of {len(w.input_ids)} tokens exceeds the loaded context of {self.seq_ctx}")
            self._lib.llama_memory_clear(memory, True)
            entries = [(int(tok), p, 0, bool(w.labels[p] >= 0)) for p, tok in enumerate(w.input_ids)]
            scored = w.scored_positions
            done = 0
            for start in range(0, len(entries), self.n_batch):
                logits = self._decode(entries[start:start + self.n_batch])
                if logits is not None:
                    yield index, scored[done:done + len(logits)], log_softmax_rows(logits)
                    done += len(logits)

    def logit_steps(self, prompt_ids: np.ndarray, max_new_tokens: int) -> Generator[np.ndarray, int, None]:
        """The prompt in ``n_batch`` chunks with logits for its last token only (as llama-bench's pp),
        then one llama_decode per new token (its tg). The logits are llama.cpp's buffer: read them
        before sending the next token."""
        n = len(prompt_ids)
        if n + max_new_tokens > self.seq_ctx:
            raise ValueError(f"{n} prompt + {max_new_tokens} new tokens exceed the loaded context of {self.seq_ctx}")
        self._lib.llama_memory_clear(self._lib.llama_get_memory(self._ctx), True)
        for first in range(0, n, self.n_batch):
            chunk = prompt_ids[first:first + self.n_batch]
            logits = self._decode([(int(t), first + i, 0, first + i == n - 1) for i, t in enumerate(chunk)])
        while True:
            token = yield logits[-1]
            logits = self._decode([(int(token), n, 0, True)])
            n += 1

    def ends_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self._lib.llama_model_get_vocab(self._model), token))

    def generate_native(self, prompt_ids: np.ndarray, decoding: Decoding, max_new_tokens: int, *,
                        ignore_eos: bool, batch_size: int, trace: bool,
                        on_token: Callable[[int], None] | None) -> Generation:
        """llama.cpp's own sampler chain (:class:`LlamaSampler`) on the same decode loop."""
        sampler = LlamaSampler(self._lib, self.tokenizer.vocab_size, decoding, prompt_ids)
        try:
            return self.generate_stepwise(prompt_ids, sampler, max_new_tokens, ignore_eos=ignore_eos, trace=trace,
                                          on_token=on_token)
        finally:
            sampler.free()

    def close(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is None:
            return
        self._pool.shutdown()
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)
        self._lib = None


def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32 (max-shifted, the sum in float64)."""
    peak = logits.max(axis=1, keepdims=True)
    shifted = logits - peak
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True, dtype=np.float64))
    return (shifted - log_z).astype(np.float32)


def target_logprobs(logits: np.ndarray, targets: np.ndarray, pool: ThreadPoolExecutor | None = None,
                    block: int = 128) -> np.ndarray:
    """log softmax(logits)[target] per row, max-shifted as llama-perplexity computes it.

    Works ``block`` rows at a time so temporaries stay small (2048 rows of SmolLM2 logits are 400 MB),
    spread over ``pool``'s threads: numpy releases the GIL in these loops, as llama-perplexity spreads
    its log-softmax over threads."""

    def rows(start: int) -> np.ndarray:
        part, tgt = logits[start:start + block], targets[start:start + block]
        peak = part.max(axis=1)
        shifted = part - peak[:, None]
        np.exp(shifted, out=shifted)
        log_z = np.log(shifted.sum(axis=1).astype(np.float64))
        return (part[np.arange(len(tgt)), tgt] - peak).astype(np.float64) - log_z

    starts = range(0, len(targets), block)
    parts = pool.map(rows, starts) if pool is not None else map(rows, starts)
    return np.concatenate(list(parts))
