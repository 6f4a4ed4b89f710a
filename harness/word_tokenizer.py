"""Word-level tokens for n-gram models: runs of word characters and single punctuation marks.

Whitespace is not a token; each token accounts for the bytes from the end of the previous token to
its own end, so bits per byte still covers every byte of the text and lines up with subword models.
Words rarer than ``min_count`` in the training text become ``<unk>``; ``<s>`` separates documents.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

from harness.tokenizer import Tokenizer

WORD = re.compile(r"\w+|[^\w\s]")
BOUNDARY, UNKNOWN = "<s>", "<unk>"


def _words(text: str, lowercase: bool) -> Iterable[str]:
    matches = (m.group() for m in WORD.finditer(text))
    return (w.lower() for w in matches) if lowercase else matches


class WordTokenizer(Tokenizer):
    def __init__(self, words: list[str], lowercase: bool):
        if words[:2] != [BOUNDARY, UNKNOWN]:
            raise ValueError(f"a word vocabulary starts with {BOUNDARY} and {UNKNOWN}")
        self.words, self.lowercase = words, lowercase
        self.index = {w: i for i, w in enumerate(words)}
        self.bos_id = self.eos_id = 0
        self.unk_id = 1
        self.add_bos = True
        self.vocab_size = len(words)

    @classmethod
    def train(cls, texts: Iterable[str], lowercase: bool, min_count: int) -> WordTokenizer:
        """Vocabulary of the training texts, most frequent first (ties alphabetical)."""
        counts = Counter()
        for text in texts:
            counts.update(_words(text, lowercase))
        kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls([BOUNDARY, UNKNOWN] + kept, lowercase)

    def encode(self, text: str) -> np.ndarray:
        get, unk = self.index.get, self.unk_id
        return np.fromiter((get(w, unk) for w in _words(text, self.lowercase)), dtype=np.int32)

    def token_bytes(self, token_id: int) -> bytes:
        return self.words[token_id].encode("utf-8")

    def byte_counts(self, text: str, ids: np.ndarray) -> np.ndarray:
        """Bytes of ``text`` each token stands for: the gap before it and its own characters."""
        char_bytes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        char_bytes = 1 + (char_bytes >= 0x80) + (char_bytes >= 0x800) + (char_bytes >= 0x10000)
        offsets = np.concatenate([[0], np.cumsum(char_bytes)])
        ends = np.fromiter((m.end() for m in WORD.finditer(text)), dtype=np.int64, count=len(ids))
        return np.diff(offsets[ends], prepend=0)
