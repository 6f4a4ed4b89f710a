"""Perplexity: token perplexity, bits per byte and word perplexity of a corpus under a backend.

Definitions (docs/metrics.md): tokenize the whole text once, cut it into windows by one of three schemes
(:mod:`harness.core.windows`), sum the NLL of the scored tokens.
token_ppl = exp(Σ nll / tokens_scored); bits_per_byte = Σ nll / (ln 2 · UTF-8 bytes of the scored
tokens); word_ppl = exp(Σ nll / words), only when every token is scored (rolling). Words are counted as
lm-evaluation-harness counts them, ``len(re.split(r"\\s+", text))``, which counts an empty word at leading
and at trailing whitespace (``word_count: lm-eval``, the default: its figure is the one people compare
with); ``word_count: whitespace`` counts ``str.split()``'s words only.
σ of token_ppl is llama-perplexity's: ppl · sqrt(var(nll) / (N − 1)); CIs bootstrap over windows.
"""

from __future__ import annotations

import math
import re
import time
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from harness.backends.base import Backend
from harness.core import stats, windows
from harness.core.capabilities import SCORE
from harness.core.gates import COUNTED, exact, noisy
from harness.core.metrics import Measurement, Metric, register
from harness.core.settings import new_key
from harness.sources.corpora import Corpus
from harness.tasks.base import Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task


class PerplexitySettings(TaskSettings):
    type: Literal["perplexity"]
    dataset: str
    window: Literal["chunked", "sliding", "rolling"] = "chunked"
    n_ctx: int = Field(512, ge=4, description="tokens per window")
    stride: int | None = Field(None, ge=1, description="sliding only; default n_ctx // 2")
    max_tokens: int | None = Field(None, ge=1, description="score only the first N tokens of the text")
    add_bos: bool | None = Field(None, description="default: what the model's tokenizer says")
    word_count: Literal["lm-eval", "whitespace"] | None = new_key(
        None, description="words of word_ppl: lm-eval (default) counts re.split(r'\\s+', text), an empty word at "
        "leading and at trailing whitespace included; whitespace counts str.split()")

    @model_validator(mode="after")
    def _window_options_fit(self):
        if self.stride is not None and self.window != "sliding":
            raise ValueError("stride applies only to window: sliding")
        if self.stride is not None and self.stride > self.n_ctx:
            raise ValueError(f"stride ({self.stride}) must not exceed n_ctx ({self.n_ctx})")
        if self.word_count is not None and self.window != "rolling":
            raise ValueError("word_count applies only to window: rolling (the only one with word_ppl)")
        return self


#: what a perplexity cell measures (the kld task reports token_ppl and tokens_scored too). Quality gates: 0.1% (a
#: real regression such as a flash-attention or build change moves perplexity by 0.5-1%; the same build repeats
#: to 1e-6)
register(
    Metric("token_ppl", "ppl", False, exact(0.001), short="token ppl", with_stderr=True),
    Metric("bits_per_byte", "bits/byte", False, exact(0.001), short="bits/byte"),
    Metric("word_ppl", "ppl", False, exact(0.001), short="word ppl"),
    Metric("nll_mean", "nats/token", False, exact(0.001)),
    Metric("tokens_scored", "tokens", True, COUNTED, short="tokens"),
    Metric("bytes_scored", "bytes", True, COUNTED),
    # a closed vocabulary's unknown tokens among them: each one event, whatever its bytes (a word n-gram's <unk>)
    Metric("unk_tokens", "tokens", True, COUNTED, short="<unk>"),
    Metric("unk_bytes", "bytes", True, COUNTED),
    # a whole scoring pass is often one measurement: gated only with samples from several processes
    Metric("scored_tok_s", "tokens/s", True, noisy(1.25), short="scored tok/s"),
)


@register_task("perplexity")
class PerplexityTask(Task):
    settings_class = PerplexitySettings
    requires = frozenset({SCORE})
    summary = ("token_ppl", "bits_per_byte", "word_ppl", "tokens_scored", "scored_tok_s", "load_s", "model_bytes",
               "peak_rss_mb", "peak_vram_mb")
    overview = ("bits_per_byte", "token_ppl", "scored_tok_s", "peak_rss_mb")
    settings: PerplexitySettings

    def context_tokens(self) -> int:
        return self.settings.n_ctx

    def _windows(self, tokens: np.ndarray, token_bytes: np.ndarray, backend: Backend,
                 add_bos: bool) -> tuple[list, np.ndarray]:
        """The windows, and the byte count of each token of the stream their ``positions`` index."""
        s, tok = self.settings, backend.tokenizer
        if s.window == "rolling":
            prefix = tok.bos_id if tok.bos_id is not None else tok.eos_id
            if prefix is None:
                raise ValueError("rolling windows need a BOS or EOS token to condition the first window on")
            return windows.rolling(tokens, s.n_ctx, prefix), token_bytes
        stream, stream_bytes = tokens, token_bytes
        if add_bos:  # a prepended BOS stands for no text
            stream = np.concatenate([[tok.bos_id], tokens]).astype(np.int32)
            stream_bytes = np.concatenate([[0], token_bytes])
        if s.window == "chunked":
            return windows.chunked(stream, s.n_ctx, tok.bos_id if add_bos else None), stream_bytes
        return windows.sliding(stream, s.n_ctx, s.stride or s.n_ctx // 2), stream_bytes

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        """Tokenize, cut windows, score them, and summarize: one pass in reading order, kept whole so
        that every figure in the row is seen to come from the same windows."""
        s, tok = self.settings, backend.tokenizer
        tokens = tok.encode(corpus.text)
        if s.max_tokens is not None:
            tokens = tokens[:s.max_tokens]
        add_bos = tok.add_bos if s.add_bos is None else s.add_bos
        if add_bos and tok.bos_id is None:
            raise ValueError("add_bos is set but the tokenizer has no BOS token")
        token_bytes = tok.byte_counts(corpus.text, tokens)
        wins, stream_bytes = self._windows(tokens, token_bytes, backend, add_bos)
        if not wins:
            raise ValueError(f"the text has {len(tokens)} tokens, fewer than one {s.window} window "
                             f"of n_ctx={s.n_ctx}")

        start = time.perf_counter()
        logps = backend.score(wins)
        elapsed = time.perf_counter() - start

        nll = -np.concatenate(logps).astype(np.float64)
        win_nll = np.array([-lp.sum() for lp in logps], dtype=np.float64)
        win_tokens = np.array([len(lp) for lp in logps], dtype=np.float64)
        win_bytes = np.array([stream_bytes[w.positions].sum() for w in wins], dtype=np.float64)
        total_nll, n_tokens, n_bytes = float(nll.sum()), int(win_tokens.sum()), int(win_bytes.sum())

        ppl = math.exp(total_nll / n_tokens)
        nll_se = stats.mean_stderr(nll)
        ppl_ci = stats.bootstrap_ci((win_nll, win_tokens), lambda a, c, axis=-1:
                                    np.exp(a.sum(axis) / c.sum(axis)))
        nll_ci = stats.bootstrap_ci((win_nll, win_tokens), lambda a, c, axis=-1: a.sum(axis) / c.sum(axis))
        bpb_ci = stats.bootstrap_ci((win_nll, win_bytes), lambda a, b, axis=-1:
                                    a.sum(axis) / (math.log(2) * b.sum(axis)))
        out = [
            Measurement("token_ppl", ppl, n_tokens, *ppl_ci, stderr=ppl * nll_se),
            Measurement("nll_mean", total_nll / n_tokens, n_tokens, *nll_ci, stderr=nll_se),
            Measurement("bits_per_byte", total_nll / (math.log(2) * n_bytes), n_tokens, *bpb_ci),
            Measurement("tokens_scored", n_tokens),
            Measurement("bytes_scored", n_bytes),
            Measurement("scored_tok_s", n_tokens / elapsed, n_tokens),
        ]
        if tok.unk_id is not None:
            unknown = [w.targets == tok.unk_id for w in wins]
            out.append(Measurement("unk_tokens", int(sum(u.sum() for u in unknown))))
            out.append(Measurement("unk_bytes", int(sum(stream_bytes[w.positions][u].sum()
                                                        for w, u in zip(wins, unknown, strict=True)))))
        every_token_scored = s.window == "rolling" and n_tokens == len(tokens)
        word_count = None
        if every_token_scored:
            word_count = s.word_count or "lm-eval"
            covered = corpus.text.encode("utf-8")[:int(token_bytes.sum())]
            n_words = count_words(covered.decode("utf-8", errors="ignore"), word_count)
            out.append(Measurement("word_ppl", math.exp(total_nll / n_words), n_words))
        return TaskResult(
            measurements=out,
            samples={"window_nll": win_nll.tolist(), "window_tokens": win_tokens.tolist(),
                     "window_bytes": win_bytes.tolist()},
            resolved={"window": s.window, "n_ctx": s.n_ctx,
                      "stride": (s.stride or s.n_ctx // 2) if s.window == "sliding" else None,
                      "add_bos": add_bos, "text_tokens": int(len(tokens)), "windows": len(wins),
                      "scoring_s": elapsed, **({"word_count": word_count} if word_count else {})},
        )


def count_words(text: str, convention: str) -> int:
    """Words of ``text`` for word_ppl: lm-eval's ``len(re.split(r"\\s+", text))`` (one more at leading
    whitespace and one more at trailing whitespace than ``str.split()``), or ``str.split()``'s."""
    return len(re.split(r"\s+", text)) if convention == "lm-eval" else len(text.split())
