"""llama.cpp's own sampler chain, for the llamacpp backend's native sampling."""

from __future__ import annotations

import ctypes

import numpy as np

from harness.core.decoding import Decoding, Generation


class LlamaSampler:
    """llama.cpp's sampler chain, built in llama.cpp's common order
    (:attr:`LlamaCppBackend.native_sampler_order`) and applied to a candidate array, so that the
    distribution it draws from can be read back."""

    def __init__(self, lib, n_vocab: int, decoding: Decoding, prompt_ids):
        self._lib, self.decoding = lib, decoding
        self._chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        add = lambda sampler: lib.llama_sampler_chain_add(self._chain, sampler)  # noqa: E731
        d = decoding
        if d.repetition_penalty != 1:
            add(lib.llama_sampler_init_penalties(n_vocab, d.repetition_window, d.repetition_penalty, 0.0, 0.0))
        if d.temperature == 0:
            add(lib.llama_sampler_init_greedy())
        else:
            if d.top_k is not None:
                add(lib.llama_sampler_init_top_k(d.top_k))
            if d.top_p is not None:
                add(lib.llama_sampler_init_top_p(d.top_p, 1))
            if d.min_p is not None:
                add(lib.llama_sampler_init_min_p(d.min_p, 1))
            add(lib.llama_sampler_init_temp(d.temperature))
            add(lib.llama_sampler_init_dist(d.seed))
        for token in prompt_ids:  # the penalty window covers the prompt, as llama.cpp's server does
            lib.llama_sampler_accept(self._chain, int(token))
        self._data = (lib.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._data)
        self._ids = np.arange(n_vocab, dtype=np.int32)

    def choose(self, logits: np.ndarray, out: Generation | None) -> int:
        d, lib = self.decoding, self._lib
        if out is None and d.temperature == 0 and d.repetition_penalty == 1:
            token = int(np.argmax(logits))  # what the greedy sampler picks, without filling the array
        else:
            view = self._view
            view["id"], view["logit"], view["p"] = self._ids, logits, 0.0
            candidates = lib.llama_token_data_array(
                data=ctypes.cast(self._data, ctypes.POINTER(lib.llama_token_data)), size=len(view), selected=-1,
                sorted=False)
            lib.llama_sampler_apply(self._chain, ctypes.byref(candidates))
            kept = view[:candidates.size]
            token = int(kept["id"][candidates.selected])
            if out is not None:
                sampled = np.zeros(len(view))
                if d.temperature == 0:
                    sampled[token] = 1.0
                else:
                    sampled[kept["id"]] = kept["p"]
                    sampled /= sampled.sum()
                out.record_step(token, logits, sampled)
        lib.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        self._lib.llama_sampler_free(self._chain)
