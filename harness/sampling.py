"""Choosing the next token from a full next-token distribution, for backends that expose one.

Order of operations (recorded with results, since it changes the outcome): temperature on the
log-probabilities (logits / T; on a count model's probabilities that is p^(1/T) renormalized), then
top-k, then top-p (nucleus), then sampling; temperature 0 is greedy. Per-step confidence (the chosen
distribution's max probability and entropy) is read before any truncation: it describes the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from harness.config import StrictModel


class Decoding(StrictModel):
    temperature: float = Field(1.0, ge=0, description="0: greedy")
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = 0


@dataclass
class Generation:
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    max_prob: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    #: seconds since the request, when each token was ready (the first is the time to first token)
    times: list[float] = field(default_factory=list)
    #: seconds the prompt took, where the backend can tell it apart from choosing the first token
    prefill_s: float | None = None


def entropy_nats(probs: np.ndarray) -> float:
    nz = probs[probs > 0]
    return float(-(nz * np.log(nz)).sum())


def shape(probs: np.ndarray, decoding: Decoding) -> np.ndarray:
    """The distribution actually sampled from, after temperature, top-k and top-p."""
    probs = np.asarray(probs, dtype=np.float64)
    if decoding.temperature == 0:
        out = np.zeros_like(probs)
        out[int(np.argmax(probs))] = 1.0
        return out
    with np.errstate(divide="ignore"):
        logits = np.log(probs) / decoding.temperature
    out = np.exp(logits - logits.max())
    if decoding.top_k is not None and decoding.top_k < len(out):
        cut = np.partition(out, -decoding.top_k)[-decoding.top_k]
        out[out < cut] = 0.0
    out /= out.sum()
    if decoding.top_p is not None and decoding.top_p < 1:
        order = np.argsort(-out, kind="stable")
        cumulative = np.cumsum(out[order])
        keep = np.searchsorted(cumulative, decoding.top_p) + 1  # smallest prefix reaching top_p
        dropped = order[keep:]
        out[dropped] = 0.0
        out /= out.sum()
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(), dtype=np.float64)
    return shifted / shifted.sum()


def choose_from_logits(logits: np.ndarray, decoding: Decoding, rng: np.random.Generator,
                       out: Generation | None = None) -> int:
    """The next token from raw logits; appends the model's max-prob and entropy to ``out`` when given.
    Greedy without a trace is a bare argmax: no pass over the vocabulary beyond it."""
    if out is None and decoding.temperature == 0:
        return int(np.argmax(logits))
    probs = softmax(logits)
    if out is not None:
        out.max_prob.append(float(probs.max()))
        out.entropy.append(entropy_nats(probs))
    return choose(probs, decoding, rng)


def choose(probs: np.ndarray, decoding: Decoding, rng: np.random.Generator) -> int:
    shaped = shape(probs, decoding)
    if decoding.temperature == 0:
        return int(np.argmax(shaped))
    return int(rng.choice(len(shaped), p=shaped))
