"""The one protocol every backend implements; tasks ask for capabilities, never for a backend's name."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from harness.core.capabilities import BATCH, BEAM, LOGITS
from harness.core.decoding import HARNESS, NATIVE, Decoding, Generation
from harness.core.errors import Unavailable, ensure_available
from harness.core.sampling import HarnessSampler
from harness.core.settings import StrictModel
from harness.core.tokenizer import Tokenizer
from harness.core.types import LoadInfo, Window

if TYPE_CHECKING:
    from harness.sources.models import ResolvedModel

class BackendSettings(StrictModel):
    """Suite settings of one backend; each backend subclasses it with a ``type`` literal."""

    type: str


class Backend(ABC):
    """A loaded model that tasks drive. One instance lives in one cell's process."""

    type_name: ClassVar[str]
    settings_class: ClassVar[type[BackendSettings]]
    capabilities: ClassVar[frozenset[str]]
    #: Model source kinds this backend can load ("gguf", "hf", "ngram").
    model_kinds: ClassVar[frozenset[str]]
    #: (module, extra) pairs checked before any cell runs, so a missing package is bad input
    dependencies: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: the order in which the backend's own sampler applies penalties, truncations and temperature
    native_sampler_order: ClassVar[str] = "unknown"
    #: its speed can be set against the machine's ceilings (a network's weights read per token, its FLOPs):
    #: the run probes the machine for its timing cells (:mod:`harness.results.probe`)
    roofline: ClassVar[bool] = True

    tokenizer: Tokenizer

    @classmethod
    def capabilities_for(cls, model_spec: dict) -> tuple[frozenset[str], str]:
        """What this backend can do with this model, and why it cannot do the rest (for the skip
        reason). Most backends can do the same with every model."""
        return cls.capabilities, ""

    @classmethod
    def dependencies_for(cls, settings: dict) -> tuple[tuple[str, str], ...]:
        """The packages these suite settings need (a quantization option may need one more)."""
        return cls.dependencies

    @classmethod
    def ensure_dependencies(cls, settings: BackendSettings) -> None:
        """Bad input (naming the extra to install) when a package these settings need is missing."""
        for module, extra in cls.dependencies_for(settings.model_dump()):
            ensure_available(module, extra, f"backend {cls.type_name}")

    @classmethod
    def cpu_threads(cls, settings: BackendSettings) -> int | None:
        """CPU threads a cell with these settings computes with, what a cluster reserves for it; None: every
        CPU its process may use (the backend's default when ``n_threads`` is unset)."""
        return getattr(settings, "n_threads", None)

    @classmethod
    def gpus(cls, settings: BackendSettings) -> int:
        """GPUs a cell with these settings needs, so that a cluster places it on a node that has one."""
        return 0

    def __init__(self, settings: BackendSettings, model: ResolvedModel):
        self.settings = settings
        self.model = model

    def prepare(self) -> dict:
        """One-time work before the measured load (converting a model format, say), in a way that does
        not count against the cell's memory; returns what to record about it."""
        return {}

    @abstractmethod
    def load(self, context_tokens: int) -> LoadInfo:
        """Load the model for windows of up to ``context_tokens`` tokens."""

    def score(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """Natural-log probability of each window's targets, in order (float64 per window)."""
        raise NotImplementedError(f"backend {self.type_name} cannot score")

    def generate(self, prompt_ids: np.ndarray, decoding: Decoding, max_new_tokens: int, *,
                 sampler: str = NATIVE, ignore_eos: bool = False, batch_size: int = 1, trace: bool = True,
                 on_token: Callable[[int], None] | None = None) -> Generation:
        """Continue ``prompt_ids`` (the prompt's tokens, BOS included where the model wants one) by up to
        ``max_new_tokens`` tokens, calling ``on_token`` as each is ready; ``ignore_eos`` generates
        exactly that many (throughput). ``sampler`` is ``native`` (the backend's own sampler, what its
        users get) or ``harness`` (:class:`harness.core.sampling.HarnessSampler` on the backend's logits, the
        same implementation for every backend). ``batch_size`` > 1 runs that many copies of the prompt
        at once where the backend batches (else :class:`harness.core.errors.Unavailable`); the returned tokens
        are the first copy's. ``trace`` records each step's distribution; timing runs turn it off, since
        it costs passes over the vocabulary per token (capability ``generate``)."""
        if sampler not in (NATIVE, HARNESS):
            raise ValueError(f"unknown sampler {sampler!r}")
        harness_sampler = sampler == HARNESS
        if harness_sampler and LOGITS not in self.capabilities:
            raise Unavailable(f"the {self.type_name} backend exposes no logits for the harness's sampler")
        if decoding.beams > 1 and (harness_sampler or BEAM not in self.capabilities):
            raise Unavailable("the harness's sampler does not search beams (native beam search only)" if harness_sampler
                              else f"the {self.type_name} backend has no beam search")
        if batch_size != 1 and (harness_sampler or BATCH not in self.capabilities):
            raise Unavailable(f"the {'harness' if harness_sampler else self.type_name + ' backend'}'s generation "
                              "runs one sequence at a time")
        if harness_sampler:
            return self.generate_stepwise(prompt_ids, HarnessSampler(decoding, prompt_ids), max_new_tokens,
                                          ignore_eos=ignore_eos, trace=trace, on_token=on_token)
        return self.generate_native(prompt_ids, decoding, max_new_tokens, ignore_eos=ignore_eos,
                                    batch_size=batch_size, trace=trace, on_token=on_token)

    def generate_native(self, prompt_ids: np.ndarray, decoding: Decoding, max_new_tokens: int, *,
                        ignore_eos: bool, batch_size: int, trace: bool,
                        on_token: Callable[[int], None] | None) -> Generation:
        """:meth:`generate` with the backend's own sampler; :meth:`generate` has already refused what the
        backend's capabilities lack (beams without ``beam``, a batch without ``batch``)."""
        raise NotImplementedError(f"backend {self.type_name} cannot generate")

    def logit_steps(self, prompt_ids: np.ndarray, max_new_tokens: int) -> Generator[np.ndarray, int, None]:
        """Next-token logits after the prompt, then after each token sent in (capability ``logits``)."""
        raise NotImplementedError(f"backend {self.type_name} gives no next-token logits")

    def ends_generation(self, token: int) -> bool:
        return token == self.tokenizer.eos_id

    def generate_stepwise(self, prompt_ids: np.ndarray, sampler, max_new_tokens: int, *, ignore_eos: bool,
                          trace: bool, on_token: Callable[[int], None] | None) -> Generation:
        """Generation one :meth:`logit_steps` step at a time, ``sampler.choose`` picking each token. The
        prefill is the time to the first logits; each token's time is when it was chosen."""
        out = Generation()
        start = time.perf_counter()
        steps = self.logit_steps(prompt_ids, max_new_tokens)
        logits = next(steps)
        out.prefill_s = time.perf_counter() - start
        for step in range(max_new_tokens):
            token = sampler.choose(logits, out if trace else None)
            out.times.append(time.perf_counter() - start)
            if not ignore_eos and self.ends_generation(token):
                break
            out.tokens.append(token)
            if on_token is not None:
                on_token(token)
            if step + 1 < max_new_tokens:
                logits = steps.send(token)
        steps.close()
        out.text = self.tokenizer.text(out.tokens)
        return out

    def logprobs(self, windows: Sequence[Window]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(window index, scored positions, their full-vocabulary log-probabilities [n, vocab]) in
        blocks, so a consumer never holds a whole text's distributions (capability ``logits``)."""
        raise NotImplementedError(f"backend {self.type_name} cannot give full log-probabilities")

    def device_memory(self) -> dict[str, float]:
        """Accelerator memory peaks of the cell (``peak_vram_mb`` and its parts); empty on CPU."""
        return {}

    @abstractmethod
    def close(self) -> None:
        """Release the model and its native memory."""
