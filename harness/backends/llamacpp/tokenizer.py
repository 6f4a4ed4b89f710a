"""llama.cpp's tokenizer of a GGUF, through llama-cpp-python's low-level bindings (the loaded model's, or
the vocabulary alone for n-gram models counted in a model's own tokens)."""

from __future__ import annotations

import ctypes

import numpy as np

from harness.core.errors import require
from harness.core.tokenizer import Tokenizer


def llama_lib():
    return require("llama_cpp", "gguf", "the llamacpp backend")


class LlamaCppTokenizer(Tokenizer):
    def __init__(self, lib, model):
        vocab = lib.llama_model_get_vocab(model)
        self._lib, self._vocab = lib, vocab
        self.vocab_size = lib.llama_vocab_n_tokens(vocab)
        bos, eos = lib.llama_vocab_bos(vocab), lib.llama_vocab_eos(vocab)
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos if eos >= 0 else None
        self.add_bos = bool(lib.llama_vocab_get_add_bos(vocab))
        template = lib.llama_model_chat_template(model, None)
        self.chat_template = template.decode() if template else None

    def encode(self, text: str) -> np.ndarray:
        return self._tokenize(text, parse_special=False)

    def encode_special(self, text: str) -> np.ndarray:
        return self._tokenize(text, parse_special=True)

    def special_text(self, token_id: int | None) -> str:
        return "" if token_id is None else self._lib.llama_vocab_get_text(self._vocab, token_id).decode()

    def markup(self, ids) -> str:
        """The text of ``ids`` with special tokens written out (``<|im_start|>``), which
        :meth:`encode_special` reads back to the same ids."""
        return b"".join(self._piece(int(t), special=True) for t in ids).decode("utf-8", errors="replace")

    def _tokenize(self, text: str, parse_special: bool) -> np.ndarray:
        data = text.encode("utf-8")
        capacity = len(data) + 16
        buf = (self._lib.llama_token * capacity)()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, parse_special)
        if n < 0:  # cannot happen with one token per byte at most, but the API says to check
            raise RuntimeError(f"llama_tokenize needed {-n} tokens")
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)

    def token_bytes(self, token_id: int) -> bytes:
        return self._piece(token_id, special=False)

    def _piece(self, token_id: int, special: bool) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._lib.llama_token_to_piece(self._vocab, int(token_id), buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = self._lib.llama_token_to_piece(self._vocab, int(token_id), buf, len(buf), 0, special)
        return buf.raw[:n]


def gguf_tokenizer(path) -> LlamaCppTokenizer:
    """The tokenizer of a GGUF file without its weights (``vocab_only``), e.g. for n-gram models
    counted in a model's own tokens. It keeps its llama.cpp model handle for the process's life."""
    lib = llama_lib()
    lib.llama_backend_init()
    params = lib.llama_model_default_params()
    params.vocab_only = True
    model = lib.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise RuntimeError(f"llama.cpp could not read the vocabulary of {path}")
    tokenizer = LlamaCppTokenizer(lib, model)
    tokenizer.owner = model
    return tokenizer


