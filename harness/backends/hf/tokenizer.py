"""A transformers tokenizer behind the harness's :class:`~harness.core.tokenizer.Tokenizer` protocol."""

from __future__ import annotations

import re

import numpy as np

from harness.core.tokenizer import Tokenizer, utf8_offsets


class HfTokenizer(Tokenizer):
    """A transformers tokenizer (byte-level BPE or SentencePiece-style) behind the harness's protocol."""

    _BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.vocab_size = len(tokenizer)
        self.bos_id = tokenizer.bos_token_id
        self.eos_id = tokenizer.eos_token_id
        probe = tokenizer("a", add_special_tokens=True).input_ids
        self.add_bos = self.bos_id is not None and probe[:1] == [self.bos_id]
        self._special = set(tokenizer.all_special_ids)
        self.chat_template = getattr(tokenizer, "chat_template", None)
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = type(decoder).__name__ == "ByteLevel"
        if self._byte_level:
            from transformers.convert_slow_tokenizer import bytes_to_unicode

            self._byte_of = {ch: b for b, ch in bytes_to_unicode().items()}

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok(text, add_special_tokens=False, split_special_tokens=True).input_ids,
                          dtype=np.int32)

    def encode_special(self, text: str) -> np.ndarray:
        return np.asarray(self._tok(text, add_special_tokens=False).input_ids, dtype=np.int32)

    def special_text(self, token_id: int | None) -> str:
        return "" if token_id is None else self._tok.convert_ids_to_tokens(int(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        if token_id in self._special:
            return b""
        piece = self._tok.convert_ids_to_tokens(int(token_id))
        if self._byte_level:
            return bytes(self._byte_of[ch] for ch in piece)
        match = self._BYTE_TOKEN.fullmatch(piece)
        return bytes([int(match.group(1), 16)]) if match else piece.replace("\u2581", " ").encode()

    def byte_counts(self, text: str, ids: np.ndarray) -> np.ndarray:
        """Byte-level vocabularies spell the text byte for byte: each token's own bytes. Others may
        normalize or add a prefix space, so count from the character offsets instead: the bytes from
        the end of the previous token's characters to the end of this one's, every byte of the covered
        text counted once (a character split across tokens goes to the last of them)."""
        if self._byte_level:
            return super().byte_counts(text, ids)
        encoded = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        n = len(ids)
        if list(encoded.input_ids[:n]) != np.asarray(ids).tolist():
            raise ValueError("byte_counts needs the ids of encode(text)")
        ends = np.maximum.accumulate(np.asarray(encoded.offset_mapping, dtype=np.int64)[:n, 1])
        return np.diff(utf8_offsets(text)[ends], prepend=0)
