"""Backend ``ngram``: a count-based language model the harness trains from the suite's corpora.

Training happens in the cell's own process the first time a model is needed (so it runs under the
cell's timeout and its cost is visible); the trained arrays are a cache entry
(:mod:`harness.sources.cache_entry`) under :func:`harness.sources.models.resolve_ngram`'s key, loaded by every
later cell and run (and trained again if the file is damaged).
A count model has no context limit: a window only bounds what it sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from harness.backends.base import Backend, BackendSettings
from harness.backends.ngram.build import build, training_stream
from harness.backends.ngram.model import NgramModel
from harness.backends.ngram.tokenizer import WordTokenizer
from harness.backends.registry import register_backend
from harness.core.capabilities import GENERATE, LOGITS, SCORE, SEED
from harness.core.decoding import Decoding, Generation
from harness.core.sampling import HARNESS_ORDER, HarnessSampler
from harness.core.tokenizer import Tokenizer
from harness.core.types import LoadInfo, Window
from harness.sources.cache_entry import cached
from harness.sources.corpora import DatasetSpec, load_corpus
from harness.sources.models import NgramSpec

NOT_NORMALIZED = "stupid-backoff scores are not a normalized distribution; perplexity needs kneser-ney"


class NgramSettings(BackendSettings):
    type: Literal["ngram"]


@register_backend("ngram")
class NgramBackend(Backend):
    settings_class = NgramSettings
    capabilities = frozenset({SCORE, LOGITS, GENERATE, SEED})
    model_kinds = frozenset({"ngram"})
    roofline = False  # table lookups: no weights streamed per token, no FLOPs
    native_sampler_order = HARNESS_ORDER + " (the harness's sampler: the n-gram model has no other)"
    settings: NgramSettings

    @classmethod
    def capabilities_for(cls, model_spec: dict) -> tuple[frozenset[str], str]:
        if model_spec.get("ngram", {}).get("smoothing") == "stupid-backoff":
            return cls.capabilities - {SCORE}, NOT_NORMALIZED
        return cls.capabilities, ""

    @classmethod
    def cpu_threads(cls, settings: NgramSettings) -> int:
        return 1  # numpy lookups, no thread pool

    def load(self, context_tokens: int) -> LoadInfo:
        recipe = self.model.recipe
        self.spec = NgramSpec.model_validate(recipe["spec"])
        start = time.perf_counter()
        entry = cached(Path(self.model.path), lambda tmp: self._train(recipe).save(tmp), NgramModel.load)
        path, self.lm, trained = entry.path, entry.value, entry.build_s is not None
        self.tokenizer = self._tokenizer(recipe)
        train_s = self.lm.meta["train_s"]
        load_s = time.perf_counter() - start
        return LoadInfo(load_s=load_s, model_bytes=self.lm.n_bytes(), details={
            "bytes_on_disk": path.stat().st_size,
            "trained_now": trained, "train_s": train_s, "order": self.lm.order, "unit": self.spec.unit,
            "smoothing": self.spec.smoothing, "vocab_size": self.lm.vocab_size,
            "train_tokens": int(len(self.lm.stream)),
            "stored_grams": [int(len(lvl.raw)) for lvl in self.lm.levels],
            "discounts": self.lm.discounts[:, 1:].round(6).tolist(),
        }, no_shape="an n-gram model has no layers, matmuls or KV cache")

    def _tokenizer(self, recipe: dict) -> Tokenizer:
        """The tokenizer of a trained model: its stored words, or the named GGUF's vocabulary."""
        if self.spec.unit == "word":
            return WordTokenizer(self.lm.meta["words"], self.spec.lowercase)
        from harness.backends.llamacpp.tokenizer import gguf_tokenizer

        return gguf_tokenizer(recipe["tokenizer_path"])

    def _train(self, recipe: dict) -> NgramModel:
        start = time.perf_counter()
        meta = {}
        if self.spec.unit == "word":
            tokenizer, encoded = WordTokenizer.train(self._texts(recipe), self.spec.lowercase, self.spec.min_count)
            meta["words"] = tokenizer.words
        else:
            tokenizer = self._tokenizer(recipe)
            encoded = [tokenizer.encode(text) for text in self._texts(recipe)]
        boundary = tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id
        if boundary is None:
            raise ValueError("the tokenizer has neither BOS nor EOS to separate documents with")
        stream = training_stream(encoded, boundary, tokenizer.vocab_size)
        del encoded
        lm = build(stream, self.spec.order, tokenizer.vocab_size, boundary)
        lm.meta = {**meta, "train_s": time.perf_counter() - start}
        return lm

    @staticmethod
    def _texts(recipe: dict) -> Iterator[str]:
        """The training texts one at a time (a large corpus is never held whole), each checked against
        the fingerprint the run started with."""
        base = Path(recipe["base_dir"])
        corpora = Path(recipe["corpora"]) if recipe["corpora"] else None
        for fingerprint in recipe["train"]:
            corpus = load_corpus(fingerprint["source"], DatasetSpec(source=fingerprint["source"]), base, corpora)
            if corpus.sha256 != fingerprint["sha256"]:
                raise RuntimeError(f"{fingerprint['source']} changed since the run started")
            yield corpus.text

    def score(self, windows: Sequence[Window]) -> list[np.ndarray]:
        """All windows in one vectorized pass: each window is a segment the model may not look
        back past; the target of position p is the token at p + 1 of the segment."""
        if self.spec.smoothing != "kneser-ney":
            raise ValueError(NOT_NORMALIZED)
        seqs, starts, scored, offset = [], [], [], 0
        for w in windows:
            seq = np.append(w.input_ids, w.labels[-1]) if w.labels[-1] >= 0 else w.input_ids
            at = w.scored_positions
            if not np.array_equal(seq[at + 1], w.labels[at]):
                raise ValueError("n-gram scoring expects each label to be the next input token")
            seqs.append(seq)
            starts.append(np.full(len(seq), offset, dtype=np.int64))
            scored.append(at + 1 + offset)
            offset += len(seq)
        logp = self.lm.logprob(np.concatenate(seqs), np.concatenate(starts), np.concatenate(scored))
        return np.split(logp, np.cumsum([len(s) for s in scored])[:-1])

    def next_distribution(self, context: np.ndarray) -> np.ndarray:
        return self.lm.next_distribution(context, self.spec.smoothing)

    def logprobs(self, windows: Sequence[Window]) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The full next-token distribution at each scored position, from the window's tokens up to it."""
        if self.spec.smoothing != "kneser-ney":
            raise ValueError(NOT_NORMALIZED)
        for index, w in enumerate(windows):
            positions = w.scored_positions
            with np.errstate(divide="ignore"):
                rows = np.log(np.stack([self.next_distribution(w.input_ids[:p + 1]) for p in positions]))
            yield index, positions, rows

    def logit_steps(self, prompt_ids: np.ndarray, max_new_tokens: int) -> Generator[np.ndarray, int, None]:
        """Log-probabilities serve as logits (softmax gives the distribution back exactly)."""
        context = [int(t) for t in prompt_ids]
        while True:
            with np.errstate(divide="ignore"):
                token = yield np.log(self.next_distribution(np.array(context)))
            context.append(int(token))

    def ends_generation(self, token: int) -> bool:
        return token == self.lm.boundary

    def generate_native(self, prompt_ids: np.ndarray, decoding: Decoding, max_new_tokens: int, *,
                        ignore_eos: bool, batch_size: int, trace: bool,
                        on_token: Callable[[int], None] | None) -> Generation:
        """The n-gram model has no sampler of its own: native sampling is the harness's. The
        distribution is computed at every step either way."""
        return self.generate_stepwise(prompt_ids, HarnessSampler(decoding, prompt_ids), max_new_tokens,
                                      ignore_eos=ignore_eos, trace=trace, on_token=on_token)

    def close(self) -> None:
        self.lm = None
