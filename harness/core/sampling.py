"""Decoding strategies, and the harness's own sampler: one implementation of every strategy, applied to
any backend's next-token logits, so a strategy means exactly the same thing on each of them.

The harness's order (recorded with results, since it changes the outcome): repetition penalty on the
raw logits (CTRL's rule: a positive logit is divided by the penalty, a negative one multiplied, for
each distinct token among the last ``repetition_window`` tokens of prompt and output), then
temperature (logits / T; on a count model's log-probabilities that is p^(1/T) renormalized), then
top-k, top-p (the smallest set reaching the mass), min-p (tokens at least ``min_p`` × the top
probability), then a draw. Temperature 0 is greedy: the argmax after the penalty.

What each backend's own ("native") sampler does instead is its ``Backend.native_sampler_order``.
"""

from __future__ import annotations

import numpy as np

from harness.core.decoding import Decoding, Generation, softmax

HARNESS_ORDER = "repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw"


def penalize(logits: np.ndarray, history: list[int], decoding: Decoding) -> np.ndarray:
    """CTRL's repetition penalty on the distinct tokens of the last ``repetition_window`` tokens."""
    logits = np.array(logits, dtype=np.float64)
    if decoding.repetition_penalty == 1 or not history:
        return logits
    recent = np.unique(np.asarray(history[-decoding.repetition_window:], dtype=np.int64))
    values = logits[recent]
    logits[recent] = np.where(values > 0, values / decoding.repetition_penalty,
                              values * decoding.repetition_penalty)
    return logits


def shape(logits: np.ndarray, decoding: Decoding, history: list[int] | None = None) -> np.ndarray:
    """The distribution the harness draws from, in :data:`HARNESS_ORDER`."""
    logits = penalize(logits, history or [], decoding)
    if decoding.temperature == 0:
        out = np.zeros_like(logits)
        out[int(np.argmax(logits))] = 1.0
        return out
    out = softmax(logits / decoding.temperature)
    if decoding.top_k is not None and decoding.top_k < len(out):
        cut = np.partition(out, -decoding.top_k)[-decoding.top_k]
        out[out < cut] = 0.0
        out /= out.sum()
    if decoding.top_p is not None and decoding.top_p < 1:
        order = np.argsort(-out, kind="stable")
        cumulative = np.cumsum(out[order])
        keep = int(np.searchsorted(cumulative, decoding.top_p)) + 1  # smallest prefix reaching top_p
        out[order[keep:]] = 0.0
        out /= out.sum()
    if decoding.min_p:
        out[out < decoding.min_p * out.max()] = 0.0
        out /= out.sum()
    return out


class HarnessSampler:
    """Chooses tokens from raw logits with :func:`shape`, remembering the tokens the penalty looks at."""

    def __init__(self, decoding: Decoding, prompt_ids):
        self.decoding = decoding
        self.rng = np.random.default_rng(decoding.seed)
        self.history = [int(t) for t in prompt_ids]

    def choose(self, logits: np.ndarray, out: Generation | None) -> int:
        """The next token; traced into ``out`` when given. Greedy without a penalty or a trace is a
        bare argmax: timing runs pay for nothing else."""
        d = self.decoding
        if out is None and d.temperature == 0 and d.repetition_penalty == 1:
            token = int(np.argmax(logits))
        else:
            sampled = shape(logits, d, self.history)
            token = int(np.argmax(sampled)) if d.temperature == 0 else int(self.rng.choice(len(sampled), p=sampled))
            if out is not None:
                out.record_step(token, logits, sampled)
        self.history.append(token)
        return token
