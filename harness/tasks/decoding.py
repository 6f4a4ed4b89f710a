"""Decoding strategies: how a model's output behaves under greedy, temperature, top-k, top-p, min-p,
repetition penalty and beam search, with the backend's own sampler or the harness's.

Each (strategy, sampler, chat) of the suite is one cell. A cell generates ``samples`` continuations
of every prompt and reports (defined in docs/metrics.md):

- ``distinct_1``, ``distinct_2``: distinct word uni-/bigrams over all the cell's words (Li et al.'s
  corpus-level distinct-n), on whitespace-separated words so that models with different tokenizers
  compare;
- ``rep_4gram``: per generation, the share of its word 4-grams that repeat an earlier one
  (1 − unique / total), averaged;
- ``len_mean``: generated tokens per sample (the model's own tokens);
- ``entropy_mean``, ``max_prob_mean``: per generated step, of the distribution the token was actually
  drawn from (after temperature and truncation: 0 and 1 for greedy), averaged over every step;
- ``ref_nll_mean``: mean NLL per token of each generation, in the reference's tokens, under the
  suite's ``reference`` model given the same prompt text (a quality proxy);
- ``deterministic``: 1 when generating the first prompt's first sample again with the same seed
  gives the same tokens.

Sample j of prompt i draws with a seed mixed from ``seeds[j]`` and i (:func:`draw_seed`), recorded
with each generation.

What a backend cannot give (gpt4all: log-probabilities, seeds) is listed under ``not_measured`` in
the cell's params with the reason. Texts and per-step traces go to the cell's ``generations.jsonl``.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from harness.backends.base import Backend
from harness.core import stats
from harness.core.capabilities import GENERATE, SEED
from harness.core.decoding import HARNESS, NATIVE, Decoding, Generation
from harness.core.gates import exact
from harness.core.metrics import Measurement, Metric, register
from harness.core.sampling import HARNESS_ORDER
from harness.core.settings import StrictModel
from harness.core.types import Window
from harness.sources.corpora import Corpus
from harness.tasks.base import Reference, Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task

#: a corpus prompt is cut to this many words (a long first sentence is still a prompt, not a document)
PROMPT_WORDS = 40


class Strategy(StrictModel):
    """One entry of ``strategies:``; a list value sweeps (one cell per combination)."""

    temperature: float | list[float] = 1.0
    top_k: int | list[int] | None = None
    top_p: float | list[float] | None = None
    min_p: float | list[float] | None = None
    repetition_penalty: float | list[float] = 1.0
    repetition_window: int = 64
    beams: int | list[int] = 1

    def expand(self) -> list[Decoding]:
        fields = self.model_dump()
        keys = list(fields)
        values = [v if isinstance(v, list) else [v] for v in fields.values()]
        return [Decoding(**dict(zip(keys, combo, strict=True))) for combo in itertools.product(*values)]


class DecodingSettings(TaskSettings):
    type: Literal["decoding"]
    dataset: str | None = Field(None, description="prompts from this corpus (see prompt_source)")
    prompts: list[str] | None = Field(None, description="prompts written in the suite")
    prompt_source: Literal["passages", "lines"] = Field(
        "passages", description="passages: the first sentence of each paragraph; lines: each non-empty line "
        "(a prompts file given as a dataset)")
    n_prompts: int = Field(5, ge=1, description="prompts taken from the dataset")
    strategies: list[Literal["greedy"] | Strategy] = Field(
        default_factory=lambda: ["greedy"], description="'greedy' or {temperature, top_k, top_p, min_p, "
        "repetition_penalty, repetition_window, beams}; list values sweep")
    sampler: Literal["native", "harness"] | list[Literal["native", "harness"]] = Field(
        NATIVE, description="native: the backend's own sampler; harness: the harness's, on the backend's logits")
    chat: bool | list[bool] = Field(False, description="apply the model's chat template to each prompt")
    system_prompt: str | None = None
    samples: int = Field(4, ge=1, description="continuations per prompt")
    seeds: list[int] | None = Field(None, description="seed of each sample (default 0, 1, ...)")
    max_new_tokens: int = Field(48, ge=1)
    reference: Reference | None = Field(None, description="model and backend that score the generated text "
                                        "(ref_nll_mean)")

    @field_validator("strategies")
    @classmethod
    def _some_strategy(cls, value):
        if not value:
            raise ValueError("expected at least one strategy")
        return value

    @model_validator(mode="after")
    def _prompts_and_seeds(self):
        if (self.prompts is None) == (self.dataset is None):
            raise ValueError("expected exactly one of prompts (a list) or dataset (a corpus to take prompts from)")
        if self.prompts is not None and not self.prompts:
            raise ValueError("prompts: expected at least one prompt")
        if self.seeds is not None and len(self.seeds) != self.samples:
            raise ValueError(f"seeds: expected one seed per sample ({self.samples}), got {len(self.seeds)}")
        return self

    def decodings(self) -> list[Decoding]:
        out = []
        for entry in self.strategies:
            out.extend([Decoding(temperature=0)] if entry == "greedy" else entry.expand())
        return out

    def variants(self) -> list[tuple[str, DecodingSettings]]:
        samplers = self.sampler if isinstance(self.sampler, list) else [self.sampler]
        chats = self.chat if isinstance(self.chat, list) else [self.chat]
        cells = []
        for decoding in self.decodings():
            strategy = decoding.model_dump(exclude={"seed"})
            for sampler in samplers:
                for chat in chats:
                    suffix = f".{sampler}.{decoding.label}" + (".chat" if chat else "")
                    cells.append((suffix, self.model_copy(update={"strategies": [Strategy(**strategy)],
                                                                  "sampler": sampler, "chat": chat})))
        return cells


def passage_prompts(text: str, n: int) -> list[str]:
    """The first sentence (at most :data:`PROMPT_WORDS` words) of each of the first ``n`` paragraphs
    (blocks between blank lines) that are prose: headings (WikiText's ``= Title =``) and blocks under
    eight words are passed over."""
    prompts = []
    for block in re.split(r"\n\s*\n", text):
        words = block.split()
        if len(words) < 8 or words[0].startswith("="):
            continue
        paragraph = " ".join(words)
        match = re.match(r"(.+?[.!?])(\s|$)", paragraph)
        sentence = match.group(1) if match else paragraph
        prompts.append(" ".join(sentence.split()[:PROMPT_WORDS]))
        if len(prompts) == n:
            break
    return prompts


def draw_seed(seed: int, prompt_index: int) -> int:
    """The seed of one generation: sample seed and prompt mixed, so that sample j of every prompt does not
    replay the same random stream (with a weakly conditioned model that repeats whole continuations
    across prompts and deflates distinct-n)."""
    return int(np.random.SeedSequence([seed, prompt_index]).generate_state(1)[0])


def distinct_n(word_lists: list[list[str]], n: int) -> float:
    grams = [tuple(words[i:i + n]) for words in word_lists for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def repeated_share(words: list[str], n: int = 4) -> float:
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else float("nan")


#: what a decoding cell measures. deterministic (1: a repeat gave the same text) keeps the 1% of any
#: deterministic metric: any change of a 0/1 flag passes it
register(
    Metric("distinct_1", "ratio", True, exact(0.01)),
    Metric("distinct_2", "ratio", True, exact(0.01), short="distinct-2"),
    Metric("rep_4gram", "ratio", False, exact(0.01), short="rep 4-gram"),
    Metric("len_mean", "tokens", True, exact(0.01), short="tokens"),
    Metric("entropy_mean", "nats", True, exact(0.01), short="entropy"),
    Metric("max_prob_mean", "probability", False, exact(0.01), short="max p"),
    Metric("ref_nll_mean", "nats/token", False, exact(0.01), short="ref NLL"),
    Metric("deterministic", "flag", True, exact(0.01)),
)


@register_task("decoding")
class DecodingTask(Task):
    settings_class = DecodingSettings
    requires = frozenset({GENERATE})
    summary = ("entropy_mean", "max_prob_mean", "distinct_2", "rep_4gram", "len_mean", "ref_nll_mean")
    overview = ("entropy_mean", "distinct_2", "rep_4gram", "ref_nll_mean")
    settings: DecodingSettings

    def context_tokens(self) -> int:
        return 1024 + self.settings.max_new_tokens

    def _one(self) -> tuple[Decoding, str, bool]:
        s = self.settings
        decodings = s.decodings()
        if len(decodings) != 1 or isinstance(s.sampler, list) or isinstance(s.chat, list):
            raise ValueError("a decoding cell holds one strategy, sampler and chat setting")
        return decodings[0], s.sampler, s.chat

    def prompts(self, corpus: Corpus | None) -> list[str]:
        s = self.settings
        if s.prompts is not None:
            return list(s.prompts)
        if s.prompt_source == "lines":
            found = [line.strip() for line in corpus.text.splitlines() if line.strip()][:s.n_prompts]
        else:
            found = passage_prompts(corpus.text, s.n_prompts)
        if not found:
            raise ValueError(f"no prompts found in dataset {corpus.name} ({s.prompt_source})")
        return found

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        s = self.settings
        decoding, sampler, chat = self._one()
        tok = backend.tokenizer
        prompts = self.prompts(corpus)
        prompt_ids = [tok.chat_prompt(p, s.system_prompt) if chat else tok.prompt(p) for p in prompts]
        seeds = s.seeds or list(range(s.samples))
        records, generations = [], []
        for i, ids in enumerate(prompt_ids):
            for j, seed in enumerate(seeds):
                gen = backend.generate(ids, decoding.model_copy(update={"seed": draw_seed(seed, i)}),
                                       s.max_new_tokens, sampler=sampler)
                generations.append(gen)
                records.append({"prompt_index": i, "prompt": prompts[i], "sample": j, "seed": draw_seed(seed, i),
                                "prompt_tokens": len(ids), "text": gen.text, "tokens": gen.tokens,
                                "steps": _with_pieces(gen.steps, tok)})
        not_measured = {}
        traced = all(len(g.entropy) > 0 for g in generations)
        if not traced:
            not_measured["entropy_mean"] = not_measured["max_prob_mean"] = (
                f"the {backend.type_name} backend exposes no next-token distribution")
        measurements, samples = self._metrics(generations, traced)
        seeded = decoding.greedy or decoding.beams > 1 or SEED in backend.capabilities
        if seeded:
            again = backend.generate(prompt_ids[0], decoding.model_copy(update={"seed": draw_seed(seeds[0], 0)}),
                                     s.max_new_tokens, sampler=sampler)
            measurements.append(Measurement("deterministic", float(again.tokens == generations[0].tokens)))
        else:
            not_measured["deterministic"] = f"the {backend.type_name} backend's sampler takes no seed"
        if s.reference is not None:
            ref_nll = self._reference_nll(prompts, generations, chat)
            samples["ref_nll"] = ref_nll.tolist()
            measurements.append(_mean_with_ci("ref_nll_mean", ref_nll))
        order = HARNESS_ORDER if sampler == HARNESS else backend.native_sampler_order
        resolved = {"strategy": decoding.model_dump(exclude={"seed"}), "sampler": sampler, "chat": chat,
                    "sampler_order": order, "seeds": seeds, "prompts": prompts,
                    "temperature": decoding.temperature, "not_measured": not_measured}
        artifacts = {"generations.jsonl": "".join(json.dumps(r) + "\n" for r in records)}
        return TaskResult(measurements, samples, resolved, artifacts)

    def _metrics(self, generations: list[Generation], traced: bool) -> tuple[list[Measurement], dict]:
        words = [g.text.split() for g in generations]
        rep = np.array([repeated_share(w) for w in words])
        lengths = np.array([len(g.tokens) for g in generations], dtype=np.float64)
        n = len(generations)
        measurements = [
            Measurement("distinct_1", distinct_n(words, 1), n),
            Measurement("distinct_2", distinct_n(words, 2), n),
            _mean_with_ci("rep_4gram", rep[~np.isnan(rep)]),
            _mean_with_ci("len_mean", lengths),
        ]
        samples = {"rep_4gram": rep.tolist(), "len": lengths.tolist()}
        if traced:
            measurements += [_step_mean("entropy_mean", [g.entropy for g in generations]),
                             _step_mean("max_prob_mean", [g.max_prob for g in generations])]
            samples["entropy"] = [float(np.mean(g.entropy)) for g in generations]
        return measurements, samples

    def _reference_nll(self, prompts: list[str], generations: list[Generation], chat: bool) -> np.ndarray:
        """Per generation, the reference's mean NLL per token of the generated text after the same prompt
        (the chat-formatted prompt text when the cell chats)."""
        reference = self.reference
        reference.load(self.context_tokens())
        try:
            ref_tok, per_prompt, windows = reference.tokenizer, len(generations) // len(prompts), []
            for index, gen in enumerate(generations):
                prompt = prompts[index // per_prompt]
                context = ref_tok.chat_prompt(prompt, self.settings.system_prompt) if chat else ref_tok.prompt(prompt)
                continuation = ref_tok.encode(gen.text)
                if len(continuation) == 0:
                    windows.append(None)
                    continue
                ids = np.concatenate([context, continuation]).astype(np.int32)
                labels = np.full(len(ids) - 1, -1, dtype=np.int32)
                labels[len(context) - 1:] = continuation  # the logits at p predict the token at p + 1
                windows.append(Window(ids[:-1], labels))
            scored = iter(reference.score([w for w in windows if w is not None]))
        finally:
            reference.close()
        return np.array([np.nan if w is None else float(-np.mean(next(scored))) for w in windows])


def _mean_with_ci(metric: str, values: np.ndarray) -> Measurement:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Measurement(metric, float("nan"), 0)
    low, high = stats.bootstrap_ci((values,), np.mean)
    return Measurement(metric, float(values.mean()), len(values), low, high, stats.mean_stderr(values))


def _step_mean(metric: str, per_generation: list[list[float]]) -> Measurement:
    """The mean over every generated step, with a CI that resamples whole generations (steps of one
    generation are not independent draws)."""
    sums = np.array([np.sum(v) for v in per_generation], dtype=np.float64)
    counts = np.array([len(v) for v in per_generation], dtype=np.float64)
    low, high = stats.bootstrap_ci((sums, counts), lambda s, c, axis=-1: s.sum(axis) / c.sum(axis))
    return Measurement(metric, float(sums.sum() / counts.sum()), int(counts.sum()), low, high)


def _with_pieces(steps: list[dict], tok) -> list[dict]:
    """The trace with each token's text beside its id, for a reader of the artifact."""
    return [{**step, "piece": tok.text([step["token"]]),
             "top": [[t, p, tok.text([t])] for t, p in step["top"]]} for step in steps]
