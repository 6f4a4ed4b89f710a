"""The tokenizer protocol: perplexities are only comparable on the tokens a backend's tokenizer makes."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Tokenizer(ABC):
    """The backend's own tokenizer: perplexities are only comparable on the tokens it produces."""

    bos_id: int | None
    eos_id: int | None
    add_bos: bool
    vocab_size: int

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` without any special tokens."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes this token contributes to the text."""

    def text(self, ids) -> str:
        """The text the tokens spell (generated text); bytes a token split are replaced, not raised."""
        return b"".join(self.token_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")

    def prompt(self, text: str) -> np.ndarray:
        """The ids a generation starts from: BOS first where the model adds one."""
        ids = self.encode(text)
        if self.add_bos and self.bos_id is not None:
            ids = np.concatenate([[self.bos_id], ids]).astype(np.int32)
        return ids

    def byte_counts(self, text: str, ids: np.ndarray) -> np.ndarray:
        """UTF-8 bytes of ``text`` that each token of ``encode(text)`` accounts for (bits per byte).

        Subword tokens spell the text out, so this is the length of each token's bytes; tokenizers
        that drop characters (a word tokenizer drops whitespace) override it."""
        unique, inverse = np.unique(np.asarray(ids), return_inverse=True)
        lengths = np.array([len(self.token_bytes(int(t))) for t in unique], dtype=np.int64)
        return lengths[inverse].reshape(-1)
