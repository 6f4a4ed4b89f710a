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
    #: the id a closed vocabulary gives every word it lacks (a word n-gram's ``<unk>``): scored as one event, so
    #: the perplexity task counts those tokens and their bytes; None for an open vocabulary (byte-level BPE)
    unk_id: int | None = None
    #: the model's chat template (Jinja), for instruct prompts; None when it has none
    chat_template: str | None = None

    @abstractmethod
    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` without any special tokens."""

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes this token contributes to the text."""

    def text(self, ids) -> str:
        """The text the tokens spell (generated text); bytes a token split are replaced, not raised."""
        return b"".join(self.token_bytes(int(t)) for t in ids).decode("utf-8", errors="replace")

    @property
    def bos_prefix(self) -> list[int]:
        """What a generation's prompt starts with: BOS where the model adds one."""
        return [self.bos_id] if self.add_bos and self.bos_id is not None else []

    def prompt(self, text: str) -> np.ndarray:
        """The ids a generation starts from."""
        return np.concatenate([self.bos_prefix, self.encode(text)]).astype(np.int32)

    def encode_special(self, text: str) -> np.ndarray:
        """Token ids of ``text`` with special-token markup (``<|im_start|>``) parsed as those tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not parse special tokens")

    def special_text(self, token_id: int | None) -> str:
        """How a special token is written in text (for chat templates that name BOS/EOS)."""
        return ""

    def chat_prompt(self, user: str, system: str | None = None) -> np.ndarray:
        """The ids of a one-turn chat in the model's own template, ready for the assistant's answer."""
        from harness.core.chat import render_chat

        if self.chat_template is None:
            raise ValueError("the model has no chat template")
        text = render_chat(self.chat_template, user, system, bos_token=self.special_text(self.bos_id),
                           eos_token=self.special_text(self.eos_id))
        ids = self.encode_special(text)
        if self.bos_prefix and (len(ids) == 0 or ids[0] != self.bos_id):
            ids = np.concatenate([self.bos_prefix, ids])
        return np.asarray(ids, dtype=np.int32)

    def byte_counts(self, text: str, ids: np.ndarray) -> np.ndarray:
        """UTF-8 bytes of ``text`` that each token of ``encode(text)`` accounts for (bits per byte).

        Subword tokens spell the text out, so this is the length of each token's bytes; tokenizers
        that drop characters (a word tokenizer drops whitespace) override it."""
        unique, inverse = np.unique(np.asarray(ids), return_inverse=True)
        lengths = np.array([len(self.token_bytes(int(t))) for t in unique], dtype=np.int64)
        return lengths[inverse].reshape(-1)


def utf8_offsets(text: str) -> np.ndarray:
    """Byte offset in ``text.encode('utf-8')`` of every character boundary (len(text) + 1 values)."""
    codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    char_bytes = 1 + (codepoints >= 0x80) + (codepoints >= 0x800) + (codepoints >= 0x10000)
    return np.concatenate([[0], np.cumsum(char_bytes)])
