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

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from harness.config import StrictModel

#: the two sampling modes of the decoding task
NATIVE, HARNESS = "native", "harness"
HARNESS_ORDER = "repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw"
#: alternatives kept per step in a generation's trace
TRACE_TOP = 5


class Decoding(StrictModel):
    temperature: float = Field(1.0, ge=0, description="0: greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    min_p: float | None = Field(None, ge=0, lt=1)
    repetition_penalty: float = Field(1.0, gt=0, description="1: off")
    repetition_window: int = Field(64, ge=1, description="last tokens the penalty looks at (llama.cpp's "
                                   "repeat_last_n)")
    beams: int = Field(1, ge=1, description="beam search with this many beams (backends that declare it)")
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 and self.beams == 1

    @property
    def label(self) -> str:
        """A short name for cell names: ``greedy``, ``t0.7``, ``t1-topp0.9``, ``beam4``."""
        if self.beams > 1:
            parts = [f"beam{self.beams}"]
        else:
            parts = ["greedy" if self.temperature == 0 else f"t{self.temperature:g}"]
        for key, short in (("top_k", "topk"), ("top_p", "topp"), ("min_p", "minp")):
            if getattr(self, key) is not None:
                parts.append(f"{short}{getattr(self, key):g}")
        if self.repetition_penalty != 1:
            parts.append(f"rep{self.repetition_penalty:g}w{self.repetition_window}")
        return "-".join(parts)


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    #: per step, of the distribution the token was drawn from (after every truncation)
    max_prob: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    #: per step (when traced): the chosen token, its probability, the model's own top alternatives
    steps: list[dict] = field(default_factory=list)
    #: seconds since the request, when each token was ready (the first is the time to first token)
    times: list[float] = field(default_factory=list)
    #: seconds the prompt took, where the backend can tell it apart from choosing the first token
    prefill_s: float | None = None

    def record_step(self, token: int, model_logits: np.ndarray, sampled: np.ndarray) -> None:
        """Trace one step: ``sampled`` is the distribution the token was drawn from."""
        model = softmax(model_logits)
        top = np.argsort(-model, kind="stable")[:TRACE_TOP]
        entropy = entropy_nats(sampled)
        self.max_prob.append(float(sampled.max()))
        self.entropy.append(entropy)
        self.steps.append({"token": int(token), "p": float(sampled[token]), "entropy": entropy,
                           "model_p": float(model[token]), "model_entropy": entropy_nats(model),
                           "top": [[int(t), float(model[t])] for t in top]})


def entropy_nats(probs: np.ndarray) -> float:
    nz = probs[probs > 0]
    return float(-(nz * np.log(nz)).sum())


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()


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
