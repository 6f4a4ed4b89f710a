"""Throughput: prefill and decode speed, time to first token, inter-token latency.

Definitions (docs/metrics.md): prefill tok/s = prompt tokens / prefill time; decode tok/s = (new − 1) /
(total − TTFT); TTFT from the request to the first token; ITL = the gaps between consecutive tokens.
Each repeat generates exactly ``new_tokens`` greedy tokens (EOS ignored, as llama-bench does) after a
prompt of exactly ``prompt_tokens`` tokens: the first tokens of a corpus, or random ids like
llama-bench's. Warmup runs are discarded. Every figure is the median over repeats with a
distribution-free CI; the per-repeat values (and every token gap) are kept for significance tests.
Load time, model bytes and peak memory come with every cell (the worker measures them).

Against the machine (:mod:`harness.core.roofline`, :mod:`harness.results.probe`): bytes read per decoded
token (weights as loaded + the KV cache at the mean decode depth), the decode bandwidth that implies
(``decode_gb_s``) and its fraction of the probe's read bandwidth (``mbu``); the prefill's FLOP/s and its
fraction of the probe's GEMM rate in the model's compute dtype (``mfu``). A backend without a model shape
(the n-gram) or a run without a probe lists them under ``not_measured`` with the reason.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from harness.backends.base import Backend
from harness.core import stats
from harness.core.capabilities import GENERATE
from harness.core.decoding import Decoding
from harness.core.gates import exact, noisy
from harness.core.metrics import Measurement, Metric, register
from harness.core.roofline import decode_bytes_per_token, mean_decode_depth, prefill_flops
from harness.results.probe import ceilings
from harness.sources.corpora import Corpus
from harness.tasks.base import Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task

#: seed of the synthetic prompts' ids
SYNTHETIC_SEED = 1234
#: per-repeat figures, summarized as median and CI (the last five only where the model has a shape)
TIMINGS = ("prefill_tok_s", "decode_tok_s", "ttft_s", "itl_p50_s", "itl_p99_s")
ROOFLINE = ("decode_bytes_per_token", "decode_gb_s", "mbu", "prefill_flop_s", "mfu")


class ThroughputSettings(TaskSettings):
    type: Literal["throughput"]
    dataset: str | None = Field(None, description="prompts are the first tokens of this corpus; "
                                "without one, random token ids (llama-bench's way)")
    prompt_tokens: int | list[int] = Field(512, description="a list expands into one cell per length")
    new_tokens: int = Field(128, ge=2, description="generated per repeat, EOS ignored")
    batch_size: int = Field(1, ge=1, description="copies of the prompt generated at once (hf only)")
    repeats: int = Field(5, ge=1)
    warmup: int = Field(1, ge=0, description="runs before the repeats, not reported")
    interleave: bool = Field(False, description="run the repeats as rounds across every interleaved cell "
                             "of the run, one fresh process per round (asv's way against drift)")

    @model_validator(mode="after")
    def _positive_prompts(self):
        lengths = self.prompt_tokens if isinstance(self.prompt_tokens, list) else [self.prompt_tokens]
        if not lengths or min(lengths) < 1:
            raise ValueError("prompt_tokens: expected one or more lengths of at least 1 token")
        return self

    def variants(self) -> list[tuple[str, ThroughputSettings]]:
        if isinstance(self.prompt_tokens, int):
            return [("", self)]
        return [(f".p{n}", self.model_copy(update={"prompt_tokens": n})) for n in self.prompt_tokens]


#: what a throughput cell measures. Timings: asv's 10%, more for the tail latency; against the machine's
#: ceilings (harness.core.roofline, harness.results.probe): bandwidth and FLOP/s
register(
    Metric("prefill_tok_s", "tokens/s", True, noisy(1.10), short="prefill tok/s"),
    Metric("decode_tok_s", "tokens/s", True, noisy(1.10), short="decode tok/s"),
    Metric("ttft_s", "s", False, noisy(1.10), short="TTFT s"),
    Metric("itl_p50_s", "s", False, noisy(1.10), short="ITL p50 s"),
    Metric("itl_p99_s", "s", False, noisy(1.20)),
    Metric("decode_bytes_per_token", "bytes", False, exact(0.0)),
    Metric("decode_gb_s", "GB/s", True, noisy(1.10)),
    Metric("mbu", "ratio", True, noisy(1.10), short="MBU", fraction=True),
    Metric("prefill_flop_s", "FLOP/s", True, noisy(1.10)),
    Metric("mfu", "ratio", True, noisy(1.10), short="MFU", fraction=True),
)


@register_task("throughput")
class ThroughputTask(Task):
    settings_class = ThroughputSettings
    requires = frozenset({GENERATE})
    timing = True
    summary = ("prefill_tok_s", "decode_tok_s", "mbu", "mfu", "ttft_s", "itl_p50_s", "peak_rss_mb", "peak_vram_mb")
    overview = ("decode_tok_s", "prefill_tok_s", "ttft_s", "peak_rss_mb")
    settings: ThroughputSettings

    def _length(self) -> int:
        p = self.settings.prompt_tokens
        if isinstance(p, list):  # a cell holds one length; a list here means the suite was not expanded
            raise ValueError("prompt_tokens must be one length per cell")
        return p

    def context_tokens(self) -> int:
        return self._length() + self.settings.new_tokens

    @classmethod
    def rounds(cls, settings: ThroughputSettings) -> int | None:
        return settings.repeats if settings.interleave else None

    @classmethod
    def one_round(cls, settings: ThroughputSettings) -> ThroughputSettings:
        return settings.model_copy(update={"repeats": 1})

    def _prompt(self, backend: Backend, corpus: Corpus | None) -> tuple[np.ndarray, str]:
        tok, n = backend.tokenizer, self._length()
        prefix = tok.bos_prefix
        if corpus is None:
            special = {t for t in (tok.bos_id, tok.eos_id) if t is not None}
            ids = np.random.default_rng(SYNTHETIC_SEED).integers(0, tok.vocab_size, n * 2)
            body = np.array([t for t in ids if t not in special][:n - len(prefix)], dtype=np.int32)
            source = "synthetic"
        else:
            # tokenize a generous head of the corpus, not all of it; the tokens kept stay clear of the
            # cut (only the last few can differ from the whole text's), else fall back to the whole text
            needed = n - len(prefix)
            body = tok.encode(corpus.text[:n * 64])
            if len(body) < needed + 2:
                body = tok.encode(corpus.text)
            body = body[:needed]
            source = f"corpus:{corpus.name}"
            if len(body) < n - len(prefix):
                raise ValueError(f"{corpus.name} has {len(body)} tokens, fewer than a {n}-token prompt")
        return np.concatenate([prefix, body]).astype(np.int32), source

    @classmethod
    def summarize(cls, samples: dict[str, list[float]]) -> list[Measurement]:
        """Median and CI over repeats of each per-repeat figure (also over interleaved rounds)."""
        out = []
        for name in (n for n in TIMINGS + ROOFLINE if samples.get(n)):
            median, low, high = stats.median_ci(samples[name])
            out.append(Measurement(name, median, len(samples[name]), low, high))
        return out

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        s = self.settings
        prompt, source = self._prompt(backend, corpus)
        greedy = Decoding(temperature=0)
        runs = []
        for i in range(s.warmup + s.repeats):
            gen = backend.generate(prompt, greedy, s.new_tokens, ignore_eos=True, batch_size=s.batch_size,
                                   trace=False)
            if len(gen.times) != s.new_tokens:
                raise RuntimeError(f"asked for {s.new_tokens} tokens, the backend produced {len(gen.times)}")
            if i >= s.warmup:
                runs.append(gen)
        samples = {
            "prefill_tok_s": [len(prompt) * s.batch_size / (g.prefill_s if g.prefill_s is not None
                                                             else g.times[0]) for g in runs],
            "decode_tok_s": [(s.new_tokens - 1) * s.batch_size / (g.times[-1] - g.times[0]) for g in runs],
            "ttft_s": [g.times[0] for g in runs],
            "itl_p50_s": [float(np.percentile(np.diff(g.times), 50)) for g in runs],
            "itl_p99_s": [float(np.percentile(np.diff(g.times), 99)) for g in runs],
            "itl_s": [float(x) for g in runs for x in np.diff(g.times)],
        }
        roofline = self._roofline(samples, len(prompt))
        return TaskResult(measurements=self.summarize(samples), samples=samples, resolved={**roofline,
            "prompt_tokens": int(len(prompt)), "prompt_source": source, "new_tokens": s.new_tokens,
            "batch_size": s.batch_size, "repeats": s.repeats, "warmup": s.warmup,
            # where the prefill time comes from: the backend's own boundary, or the first token
            "prefill_timing": "backend" if runs[0].prefill_s is not None else "first token",
            "token_timing": "streamed",
        })

    def _roofline(self, samples: dict[str, list[float]], prompt_tokens: int) -> dict:
        """Add the per-repeat figures against the machine's ceilings to ``samples``; return what they rest
        on (bytes per token, FLOPs, ceilings) and, per metric left out, why."""
        s, loaded = self.settings, self.loaded
        if loaded is None or loaded.shape is None:
            reason = loaded.no_shape if loaded is not None else "no load information"
            return {"not_measured": dict.fromkeys(ROOFLINE, reason)}
        shape = loaded.shape
        depth = mean_decode_depth(prompt_tokens, s.new_tokens)
        per_token = decode_bytes_per_token(loaded.model_bytes, shape, depth, s.batch_size)
        flops = prefill_flops(shape, prompt_tokens)
        samples["decode_bytes_per_token"] = [per_token] * len(samples["decode_tok_s"])
        samples["decode_gb_s"] = [t * per_token / 1e9 for t in samples["decode_tok_s"]]
        # prefill_tok_s is prompt tokens x batch / prefill time
        samples["prefill_flop_s"] = [t / prompt_tokens * flops for t in samples["prefill_tok_s"]]
        device = "cuda" if str(loaded.details.get("device", "cpu")).startswith("cuda") else "cpu"
        threads = loaded.details.get("n_threads")
        probes = self.machine or {}
        probe = probes.get(str(threads)) if device == "cpu" else next(iter(probes.values()), None)
        bandwidth, peak = ceilings(probe, device, shape.compute_dtype)
        not_measured = {}
        if bandwidth is None:
            not_measured["mbu"] = not_measured["mfu"] = (
                "the run has no machine probe (suite: probe: false)" if self.machine is None
                else f"no probe of {device} with {threads} threads")
        else:
            samples["mbu"] = [g * 1e9 / bandwidth for g in samples["decode_gb_s"]]
            if peak is None:
                not_measured["mfu"] = f"the probe has no {shape.compute_dtype} GEMM on {device}"
            else:
                samples["mfu"] = [f / peak for f in samples["prefill_flop_s"]]
        return {"roofline": {"shape": shape.as_dict(), "weight_bytes": loaded.model_bytes, "mean_decode_depth": depth,
                             "prefill_flops": flops, "device": device, "threads": threads,
                             "read_bytes_s": bandwidth, "gemm_flop_s": peak},
                **({"not_measured": not_measured} if not_measured else {})}
