"""GGUF models through the gpt4all package (its own bundled llama.cpp): generation only.

What gpt4all cannot give is not faked: it exposes no log-probabilities (no ``score``, no per-step
max-prob or entropy) and its ``generate`` takes no seed. It takes text, not token ids, so a prompt
is detokenized and gpt4all tokenizes it again; the ids it reports through its prompt callback must
equal the prompt's, or the call fails. Its bundled llama.cpp (August 2024) predates some pre-tokenizer
names; a GGUF that names one is copied once with the equivalent name that llama.cpp knows
(:data:`EQUIVALENT_PRE_TOKENIZERS`) and the copy's derivation is recorded with the results.
Every sampling parameter is passed explicitly: gpt4all's defaults (repeat_penalty 1.18, n_batch 8)
would change what is measured.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from harness.backends.base import Backend, BackendSettings
from harness.backends.registry import register_backend
from harness.core.capabilities import GENERATE
from harness.core.decoding import Decoding, Generation
from harness.core.errors import require
from harness.core.roofline import gguf_shape
from harness.core.types import LoadInfo
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import cached
from harness.sources.fingerprint import sha256_file
from harness.sources.gguf_header import read_header

#: pre-tokenizer names newer than gpt4all 2.8.2's llama.cpp -> a name it knows with the same split
#: (llama.cpp's llama-vocab.cpp gives smollm and command-r the same regexes and no space cleaning)
EQUIVALENT_PRE_TOKENIZERS = {"smollm": "command-r"}


class Gpt4AllSettings(BackendSettings):
    type: Literal["gpt4all"]
    n_threads: int | None = Field(None, ge=1, description="default: gpt4all's (all cores)")
    n_batch: int = Field(512, ge=1, description="prompt tokens per evaluation (gpt4all's default is 8)")
    n_ctx: int | None = Field(None, ge=1, description="default: what the task needs")


def _pre_tokenizer(path: Path) -> str | None:
    gguf = require("gguf", "gpt4all", "reading a GGUF's tokenizer name")
    field = gguf.GGUFReader(path).fields.get("tokenizer.ggml.pre")
    return field.contents() if field is not None else None


@register_backend("gpt4all")
class Gpt4AllBackend(Backend):
    settings_class = Gpt4AllSettings
    capabilities = frozenset({GENERATE})
    model_kinds = frozenset({"gguf"})
    #: gpt4all-backend's ``llama_sample_top_p_top_k`` (its llama.cpp fork), per its source
    native_sampler_order = ("repetition penalty (last repetition_window tokens) -> top-k -> top-p -> min-p -> "
                            "temperature -> draw")
    dependencies = (("gpt4all", "gpt4all"), ("gguf", "gpt4all"), ("llama_cpp", "gguf"))
    settings: Gpt4AllSettings

    def prepare(self) -> dict:
        """The GGUF gpt4all will load: the model's own, or a copy renaming its pre-tokenizer."""
        from harness.sources.gguf_rewrite import rewrite_gguf

        self._path = Path(self.model.path)
        pre = _pre_tokenizer(self._path)
        if pre not in EQUIVALENT_PRE_TOKENIZERS:
            return {"gguf_for_gpt4all": str(self._path)}
        renamed = EQUIVALENT_PRE_TOKENIZERS[pre]
        target = cached(cache_dir() / "gpt4all-gguf" / f"{self.model.sha256[:32]}-pre-{renamed}.gguf",
                        lambda tmp: rewrite_gguf(self._path, tmp, metadata={"tokenizer.ggml.pre": renamed}),
                        read_header).path
        self._path = target
        return {"gguf_for_gpt4all": str(target), "derived_from_sha256": self.model.sha256,
                "derivation": f"tokenizer.ggml.pre {pre!r} -> {renamed!r}", "derived_sha256": sha256_file(target)}

    def load(self, context_tokens: int) -> LoadInfo:
        gpt4all = require("gpt4all", "gpt4all", "the gpt4all backend")
        from harness.backends.llamacpp.tokenizer import gguf_tokenizer

        s = self.settings
        n_ctx = s.n_ctx or max(context_tokens, 8)
        start = time.perf_counter()
        self._model = gpt4all.GPT4All(self._path.name, model_path=str(self._path.parent), allow_download=False,
                                      n_threads=s.n_threads, device="cpu", n_ctx=n_ctx, verbose=False)
        load_s = time.perf_counter() - start
        self.tokenizer = gguf_tokenizer(self.model.path)  # llama.cpp's, to cut prompts and check gpt4all's
        return LoadInfo(load_s=load_s, model_bytes=self._path.stat().st_size, details={
            "gpt4all": getattr(gpt4all, "__version__", "2.8.2"), "n_ctx": n_ctx, "n_batch": s.n_batch,
            "n_threads": self._model.model.thread_count(), "device": "cpu",
            "model_bytes_source": "file size (gpt4all reports no tensor size)",
            "not_measurable": "log-probabilities (score, per-step max-prob/entropy) and seeds",
        }, shape=gguf_shape(self.model.path, compute_dtype="fp32", kv_dtype_bytes=2))  # its llama.cpp's KV: f16

    def generate_native(self, prompt_ids: np.ndarray, decoding: Decoding, max_new_tokens: int, *,
                        ignore_eos: bool, batch_size: int, trace: bool,
                        on_token: Callable[[int], None] | None) -> Generation:
        """gpt4all's generate with a streaming callback. It always stops at EOS (``ignore_eos`` cannot be
        honoured: a timing run that ends early fails rather than reporting fewer tokens). The prompt
        goes in as a chat session's prompt template with an empty message: gpt4all parses special
        tokens (a chat template's ``<|im_start|>``) in templates only, and adds nothing of its own there."""
        tok, d = self.tokenizer, decoding
        body = [int(t) for t in prompt_ids]
        if body[:len(tok.bos_prefix)] == tok.bos_prefix:  # gpt4all's tokenizer adds that BOS itself; other
            body = body[len(tok.bos_prefix):]             # ids equal to BOS (SmolLM2's <|im_start|>) stay
        seen: list[int] = []
        seen_at: list[float] = []
        out = Generation()
        model = self._model.model

        def on_prompt(token_id: int) -> bool:  # each prompt token gpt4all evaluates
            seen.append(token_id)
            seen_at.append(time.perf_counter() - start)
            return True

        def on_response(token_id: int, _piece: str) -> bool:
            out.times.append(time.perf_counter() - start)
            out.tokens.append(token_id)
            if on_token is not None:
                on_token(token_id)
            return True

        template = tok.markup(body).replace("{", "{{").replace("}", "}}") + "{0}{1}"  # %1%2: nothing added
        model._prompt_callback = on_prompt  # the instance's hook shadows gpt4all's no-op
        start = time.perf_counter()
        with self._model.chat_session(system_prompt="", prompt_template=template):
            self._model.generate("", max_tokens=max_new_tokens, temp=d.temperature,
                                 top_k=d.top_k or tok.vocab_size, top_p=d.top_p or 1.0, min_p=d.min_p or 0.0,
                                 repeat_penalty=d.repetition_penalty,
                                 repeat_last_n=d.repetition_window if d.repetition_penalty != 1 else 0,
                                 n_batch=self.settings.n_batch, callback=on_response)
        del model._prompt_callback
        if seen != body:
            raise ValueError("gpt4all tokenized the prompt differently from the model's tokenizer "
                             f"({len(seen)} vs {len(body)} tokens); it takes text, so ids that do not "
                             "survive detokenizing cannot be given to it")
        out.prefill_s = seen_at[len(body) - 1] if body else None
        out.text = tok.text(out.tokens)
        return out

    def close(self) -> None:
        model = getattr(self, "_model", None)
        if model is not None:
            model.close()
            self._model = None
