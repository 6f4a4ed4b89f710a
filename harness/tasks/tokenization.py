"""Tokenization: how many tokens a backend's tokenizer spends on a corpus.

It decides cost (tokens/s means different text/s), context use (how much text fits in n_ctx) and why
perplexities of different tokenizers cannot be compared directly (bits per byte can). tokens_per_byte =
tokens / UTF-8 bytes; tokens_per_word = tokens / whitespace-separated words; both over the whole text
(or its first ``max_bytes``, cut at a character boundary), special tokens excluded.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from harness.backends.base import Backend
from harness.core.metrics import Measurement
from harness.sources.corpora import Corpus
from harness.tasks.base import Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task


class TokenizationSettings(TaskSettings):
    type: Literal["tokenization"]
    dataset: str
    max_bytes: int | None = Field(None, ge=1, description="only the first N bytes of the text")


@register_task("tokenization")
class TokenizationTask(Task):
    settings_class = TokenizationSettings
    requires = frozenset()
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
        return TaskResult(measurements=[
            Measurement("tokens_per_byte", n_tokens / n_bytes, n_bytes),
            Measurement("tokens_per_word", n_tokens / n_words, n_words),
            Measurement("tokenize_mb_s", n_bytes / 1e6 / elapsed, n_bytes),
        ], resolved={"vocab_size": backend.tokenizer.vocab_size, "tokens": n_tokens, "bytes": n_bytes,
                     "words": n_words,
                     "distinct_tokens": int(len(set(tokens.tolist())))})
