"""Tokenization: how many tokens a backend's tokenizer spends on a corpus.

It decides cost (tokens/s means different text/s), context use (how much text fits in n_ctx) and why
perplexities of different tokenizers cannot be compared directly (bits per byte can). tokens_per_byte =
tokens / UTF-8 bytes; tokens_per_word = tokens / whitespace-separated words; both over the whole text
(or its first ``max_bytes``, cut at a character boundary), special tokens excluded.

With a ``reference:`` (the same model through another backend) it also reports ``differing_tokens``: the
tokens of this backend's split that the reference's split does not have (same id at the same byte
offset). 0 says both give the same ids; two implementations of one vocabulary can part on rare cases.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from harness.backends.base import Backend
from harness.core.gates import exact, noisy
from harness.core.metrics import Measurement, Metric, register
from harness.core.settings import new_key
from harness.sources.corpora import Corpus
from harness.tasks.base import Reference, Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task


class TokenizationSettings(TaskSettings):
    type: Literal["tokenization"]
    dataset: str
    max_bytes: int | None = Field(None, ge=1, description="only the first N bytes of the text")
    reference: Reference | None = new_key(None, description="the same model through another backend, whose "
                                        "tokens these are compared with")


#: what a tokenization cell measures
register(
    Metric("tokens_per_byte", "tokens/byte", False, exact(0.0), short="tokens/byte"),
    Metric("tokens_per_word", "tokens/word", False, exact(0.0), short="tokens/word"),
    Metric("tokenize_mb_s", "MB/s", True, noisy(1.25)),
    Metric("differing_tokens", "tokens", False, exact(0.0), short="differing tokens"),
)


@register_task("tokenization")
class TokenizationTask(Task):
    settings_class = TokenizationSettings
    requires = frozenset()
    summary = ("tokens_per_byte", "tokens_per_word", "tokenize_mb_s", "differing_tokens")
    overview = ("tokens_per_byte", "tokens_per_word", "tokenize_mb_s")
    settings: TokenizationSettings

    def context_tokens(self) -> int:
        return 1

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        text = corpus.text
        if self.settings.max_bytes is not None:
            text = text.encode("utf-8")[:self.settings.max_bytes].decode("utf-8", errors="ignore")
        start = time.perf_counter()
        tokens = backend.tokenizer.encode(text)
        elapsed = time.perf_counter() - start
        n_bytes, n_words, n_tokens = len(text.encode("utf-8")), len(text.split()), len(tokens)
        if n_bytes == 0 or n_words == 0:
            raise ValueError(f"{corpus.name} has no text to tokenize")
        measurements = [
            Measurement("tokens_per_byte", n_tokens / n_bytes, n_bytes),
            Measurement("tokens_per_word", n_tokens / n_words, n_words),
            Measurement("tokenize_mb_s", n_bytes / 1e6 / elapsed, n_bytes),
        ]
        resolved = {"vocab_size": backend.tokenizer.vocab_size, "tokens": n_tokens, "bytes": n_bytes,
                    "words": n_words, "distinct_tokens": int(len(set(tokens.tolist())))}
        if self.reference is not None:
            comparison = self._compare_with_reference(backend, text, tokens)
            measurements.append(Measurement("differing_tokens", comparison["differing_tokens"], n_tokens))
            resolved["reference_tokens"] = comparison["reference_tokens"]
        return TaskResult(measurements=measurements, resolved=resolved)

    def _compare_with_reference(self, backend: Backend, text: str, tokens: np.ndarray) -> dict:
        reference = self.reference
        reference.load(self.context_tokens())
        try:
            ref_tok = reference.tokenizer
            if ref_tok.vocab_size != backend.tokenizer.vocab_size:
                raise ValueError(f"the reference's vocabulary has {ref_tok.vocab_size} tokens, this backend's "
                                 f"{backend.tokenizer.vocab_size}: their token ids cannot be compared")
            ref_tokens = ref_tok.encode(text)
            ours, theirs = placed_tokens(ref_tok, tokens), placed_tokens(ref_tok, ref_tokens)
        finally:
            reference.close()
        return {"differing_tokens": int(np.count_nonzero(~np.isin(ours, theirs))),
                "reference_tokens": len(ref_tokens)}


def token_offsets(tokenizer, ids: np.ndarray) -> np.ndarray:
    """Byte offset where each token starts, and where the last ends (len(ids) + 1 values), counted with
    ``tokenizer``'s bytes of each id: one count for both splits, whatever each backend's
    :meth:`~harness.tokenizer.Tokenizer.byte_counts` does with a character split across tokens."""
    unique, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    lengths = np.array([len(tokenizer.token_bytes(int(t))) for t in unique], dtype=np.int64)[inverse.reshape(-1)]
    return np.concatenate([[0], np.cumsum(lengths)])


def placed_tokens(tokenizer, ids: np.ndarray) -> np.ndarray:
    """Each token as one number: (byte offset where it starts, id), offsets by :func:`token_offsets`."""
    return token_offsets(tokenizer, ids)[:-1] * tokenizer.vocab_size + np.asarray(ids, dtype=np.int64)
