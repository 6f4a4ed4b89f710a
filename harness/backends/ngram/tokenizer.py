"""Word-level tokens for n-gram models: runs of word characters and single punctuation marks.

Whitespace is not a token; each token accounts for the bytes from the end of the previous token to
its own end, so bits per byte still covers every byte of the text and lines up with subword models.
Words rarer than ``min_count`` in the training text become ``<unk>``; ``<s>`` separates documents.
Both are free to a word model and not to a subword one: where lines break (whitespace is no token), and the
spelling of a word the vocabulary lacks (one ``<unk>`` event); the perplexity task counts the latter.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

import numpy as np

from harness.core.tokenizer import Tokenizer, utf8_offsets

WORD = re.compile(r"\w+|[^\w\s]")
SPACE = re.compile(r"\s")
BOUNDARY, UNKNOWN = "<s>", "<unk>"
#: characters per findall call: as fast as one findall, and the words of one slice are few enough that
#: the memory they take is reused by the next slice instead of scattering the vocabulary over the heap
_SLICE = 1 << 14


def _words(text: str, lowercase: bool) -> Iterator[Iterable[str]]:
    """The text's tokens in order, a slice of the text at a time. Slices end at whitespace, which
    never falls inside a token; the text is segmented before lower-casing, which can change the
    length of some characters."""
    start = 0
    while start < len(text):
        cut = SPACE.search(text, min(start + _SLICE, len(text)))
        end = cut.start() if cut else len(text)
        words = WORD.findall(text, start, end)
        yield map(str.lower, words) if lowercase else words
        start = end


def _ids(text: str, lowercase: bool, lookup: Callable[[str], int]) -> np.ndarray:
    """``lookup`` of every token of the text, as int32 (mapped slice by slice in C, not word by word)."""
    return np.fromiter(chain.from_iterable(map(lookup, words) for words in _words(text, lowercase)), np.int32)


class _FirstSeen(dict):
    """Numbers words in the order they are first seen."""

    def __missing__(self, word: str) -> int:
        self[word] = number = len(self)
        return number


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
    def train(cls, texts: Iterable[str], lowercase: bool, min_count: int) -> tuple[WordTokenizer, list[np.ndarray]]:
        """The vocabulary of the training texts, most frequent first (ties alphabetical), and the texts
        encoded with it in the smallest unsigned type that holds every id: one pass numbers words as
        first seen, then the numbers are remapped. ``texts`` may be a generator: one text is held at a
        time."""
        seen = _FirstSeen()
        encoded, counts = [], np.zeros(0, np.int64)
        for text in texts:
            ids = _ids(text, lowercase, seen.__getitem__)
            counts = np.bincount(ids, minlength=len(seen)) + np.pad(counts, (0, len(seen) - len(counts)))
            encoded.append(ids)
        words, counts = list(seen), counts.tolist()  # Python ints: a fast sort key
        kept = sorted((i for i, count in enumerate(counts) if count >= min_count),
                      key=lambda i: (-counts[i], words[i]))
        remap = np.ones(len(words), dtype=np.min_scalar_type(len(kept) + 1))  # <unk>
        remap[kept] = np.arange(2, len(kept) + 2)
        tokenizer = cls([BOUNDARY, UNKNOWN] + [words[i] for i in kept], lowercase)
        for i, ids in enumerate(encoded):
            encoded[i] = remap[ids]
        return tokenizer, encoded

    def encode(self, text: str) -> np.ndarray:
        index, unk = self.index, self.unk_id
        return _ids(text, self.lowercase, lambda word: index.get(word, unk))

    def token_bytes(self, token_id: int) -> bytes:
        return self.words[token_id].encode("utf-8")

    def text(self, ids) -> str:
        """Words and punctuation joined by single spaces: the spacing is not in the vocabulary."""
        return " ".join(self.words[int(t)] for t in ids)

    def byte_counts(self, text: str, ids: np.ndarray) -> np.ndarray:
        """Bytes of ``text`` each token stands for: the gap before it and its own characters."""
        offsets = utf8_offsets(text)
        ends = np.fromiter((m.end() for m in WORD.finditer(text)), dtype=np.int64, count=len(ids))
        return np.diff(offsets[ends], prepend=0)
