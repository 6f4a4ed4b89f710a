"""A generation request (:class:`Decoding`: the strategy) and its result (:class:`Generation`), shared by
the decoding task, every backend and the harness's sampler."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from harness.core.settings import StrictModel

#: the two sampling modes of the decoding task
NATIVE, HARNESS = "native", "harness"
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
