"""KL-divergence of a candidate (a quantization, a backend) from a reference on the same tokens: the
statistics ``llama-perplexity --kl-divergence`` prints, without its multi-GiB logit file.

Both models are loaded in the cell's process and every window is scored by both, one window at a time
(streaming): only one window's full-vocabulary log-probabilities per model are ever held (n_ctx/2 ×
vocabulary floats: 50 MB each for SmolLM2 at n_ctx 512). The price is the reference's forward passes,
repeated in every candidate cell; llama.cpp instead stores the reference's log-probs once (as uint16,
~100 kB per scored token for a 49k vocabulary: 15 GB for WikiText-2 raw test with SmolLM2).

Both score the reference tokenizer's ids (llama-perplexity's second pass reads them from the base
file); a pair whose vocabularies differ is refused. Windows are llama-perplexity's (chunked: the
second half of each n_ctx chunk scored). Per scored position: KLD = Σ_v p_ref(v) (log p_ref(v) −
log p(v)); Δp = p(correct) − p_ref(correct); same_top1 when both argmaxes agree. Reported: PPL of both,
their ratio and ln-ratio (σ from the per-token differences), KLD mean ± σ and percentiles, Δp
mean/RMS/percentiles, same_top1 ± binomial σ.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
from pydantic import Field

from harness.backends.base import Backend
from harness.core import stats, windows
from harness.core.capabilities import LOGITS
from harness.core.gates import exact
from harness.core.metrics import Measurement, Metric, register
from harness.sources.corpora import Corpus
from harness.tasks.base import Reference, Task, TaskResult, TaskSettings
from harness.tasks.registry import register_task

#: the percentiles llama-perplexity prints, as metric name suffixes and fractions
PERCENTILES = {"max": 1.0, "p999": 0.999, "p99": 0.99, "p95": 0.95, "p90": 0.90, "median": 0.5, "p10": 0.10,
               "p5": 0.05, "p1": 0.01, "p01": 0.001, "min": 0.0}
#: rows of log-probabilities turned into statistics at once (bounds float64 temporaries)
ROWS = 64


class KldSettings(TaskSettings):
    type: Literal["kld"]
    dataset: str
    reference: Reference = Field(description="the model and backend the candidate is compared with")
    n_ctx: int = Field(512, ge=4, description="tokens per chunk (llama-perplexity's -c)")
    max_tokens: int | None = Field(None, ge=1, description="compare only on the first N tokens of the text")


class PositionStats:
    """Per scored position: KLD, NLL of both models, Δp and same-top-1, filled window by window."""

    def __init__(self):
        self.parts: dict[str, list[np.ndarray]] = {k: [] for k in ("kld", "nll", "nll_ref", "dp", "same")}

    def add(self, logp_ref: np.ndarray, logp: np.ndarray, targets: np.ndarray) -> float:
        """Add one window's positions; returns the window's mean KLD."""
        first = len(self.parts["kld"])
        for start in range(0, len(targets), ROWS):
            ref = logp_ref[start:start + ROWS].astype(np.float64)
            cand = logp[start:start + ROWS].astype(np.float64)
            tgt = targets[start:start + ROWS]
            rows = np.arange(len(tgt))
            p_ref = np.exp(ref)
            with np.errstate(invalid="ignore"):  # 0 · log 0 terms count as 0
                self.parts["kld"].append(np.sum(p_ref * (ref - cand), axis=1, where=p_ref > 0))
            self.parts["nll"].append(-cand[rows, tgt])
            self.parts["nll_ref"].append(-ref[rows, tgt])
            self.parts["dp"].append(np.exp(cand[rows, tgt]) - p_ref[rows, tgt])
            self.parts["same"].append((ref.argmax(axis=1) == cand.argmax(axis=1)).astype(np.float64))
        return float(np.concatenate(self.parts["kld"][first:]).mean())

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.parts.items()}


def summarize(values: dict[str, np.ndarray]) -> tuple[list[Measurement], dict]:
    """llama-perplexity's KLD report as measurements (and the full percentile tables)."""
    kld, nll, nll_ref, dp, same = (values[k] for k in ("kld", "nll", "nll_ref", "dp", "same"))
    n = len(kld)
    diff = nll - nll_ref
    ln_ratio, ln_ratio_se = float(diff.mean()), stats.mean_stderr(diff)
    top1 = float(same.mean())
    kld_q = {name: float(np.quantile(kld, q)) for name, q in PERCENTILES.items()}
    dp_q = {name: float(np.quantile(dp, q)) for name, q in PERCENTILES.items()}
    rms = math.sqrt(float(np.mean(dp * dp)))
    # σ of the RMS by error propagation, as llama-perplexity gives it
    rms_se = stats.mean_stderr(dp * dp) / (2 * rms) if rms > 0 else math.nan
    ppl, ppl_ref = math.exp(nll.mean()), math.exp(nll_ref.mean())
    measurements = [
        Measurement("kld_mean", float(kld.mean()), n, stderr=stats.mean_stderr(kld)),
        Measurement("kld_p99", kld_q["p99"], n),
        Measurement("kld_max", kld_q["max"], n),
        Measurement("kld_median", kld_q["median"], n),
        Measurement("same_top1", top1, n, stderr=math.sqrt(top1 * (1 - top1) / (n - 1)) if n > 1 else math.nan),
        Measurement("delta_p_mean", float(dp.mean()), n, stderr=stats.mean_stderr(dp)),
        Measurement("delta_p_rms", rms, n, stderr=rms_se),
        Measurement("token_ppl", ppl, n, stderr=ppl * stats.mean_stderr(nll)),
        Measurement("ref_token_ppl", ppl_ref, n, stderr=ppl_ref * stats.mean_stderr(nll_ref)),
        Measurement("ppl_ratio", math.exp(ln_ratio), n, stderr=math.exp(ln_ratio) * ln_ratio_se),
        Measurement("ln_ppl_ratio", ln_ratio, n, stderr=ln_ratio_se),
        Measurement("tokens_scored", n),
    ]
    tables = {"kld_percentiles": kld_q, "delta_p_percentiles": dp_q,
              "ppl_correlation": float(np.corrcoef(nll, nll_ref)[0, 1]) if n > 1 else math.nan}
    return measurements, tables


def check_same_vocabulary(tok, ref_tok, tokens: np.ndarray) -> None:
    """Both models must mean the same thing by every id of the text (and agree on BOS): the candidate scores
    the reference's tokens, as llama-perplexity's second pass reads them from the base file."""
    if tok.vocab_size != ref_tok.vocab_size or (tok.bos_id, tok.add_bos) != (ref_tok.bos_id, ref_tok.add_bos):
        raise ValueError(f"the reference's tokenizer differs from the candidate's (vocabularies "
                         f"{ref_tok.vocab_size} vs {tok.vocab_size}, BOS {ref_tok.bos_id}/{ref_tok.add_bos} vs "
                         f"{tok.bos_id}/{tok.add_bos}): KL-divergence needs the same token ids")
    for token in np.unique(tokens):
        ours, theirs = tok.token_bytes(int(token)), ref_tok.token_bytes(int(token))
        if ours != theirs:
            raise ValueError(f"the reference's tokenizer differs from the candidate's (token {token} is {theirs!r} "
                             f"vs {ours!r}): KL-divergence needs the same token ids")


def own_tokenization(tok, text: str, tokens: np.ndarray) -> dict:
    """How the candidate's own tokenizer would have split the text (two implementations of one vocabulary
    can part on rare pre-tokenization cases: llama.cpp and transformers on SmolLM2 differ at 2 of 303k)."""
    own = tok.encode(text)
    differ = int(np.count_nonzero(own != tokens)) if len(own) == len(tokens) else None
    return {"tokens": len(own), "reference_tokens": len(tokens), "positions_that_differ": differ}


#: what a kld cell measures beside perplexity's token_ppl and tokens_scored. kld_median, delta_p_mean,
#: ref_token_ppl and ln_ppl_ratio keep the 1% of any deterministic metric: they are shown beside the gated
#: kld_mean, delta_p_rms and ppl_ratio, which already catch what would move them
register(
    Metric("kld_mean", "nats", False, exact(0.01, 1e-4), short="KLD mean"),
    Metric("kld_p99", "nats", False, exact(0.01, 1e-4), short="KLD p99"),
    Metric("kld_max", "nats", False, exact(0.01, 1e-4)),
    Metric("kld_median", "nats", False, exact(0.01)),
    Metric("same_top1", "ratio", True, exact(0.0, 0.002), short="same top-1", fraction=True),
    Metric("delta_p_mean", "probability", True, exact(0.01)),
    Metric("delta_p_rms", "probability", False, exact(0.01, 1e-4)),
    Metric("ref_token_ppl", "ppl", False, exact(0.01)),
    Metric("ppl_ratio", "ratio", False, exact(0.001), short="PPL ratio"),
    Metric("ln_ppl_ratio", "nats/token", False, exact(0.01)),
)


@register_task("kld")
class KldTask(Task):
    settings_class = KldSettings
    requires = frozenset({LOGITS})
    summary = ("kld_mean", "kld_p99", "same_top1", "ppl_ratio", "token_ppl", "model_bytes", "peak_rss_mb")
    overview = ("kld_mean", "same_top1", "ppl_ratio", "peak_rss_mb")
    settings: KldSettings

    def context_tokens(self) -> int:
        return self.settings.n_ctx

    def run(self, backend: Backend, corpus: Corpus | None) -> TaskResult:
        s, reference = self.settings, self.reference
        if LOGITS not in reference.capabilities:
            raise ValueError(f"the reference's backend ({reference.type_name}) gives no log-probabilities")
        reference.load(s.n_ctx)
        try:
            tok, ref_tok = backend.tokenizer, reference.tokenizer
            tokens = ref_tok.encode(corpus.text)
            check_same_vocabulary(tok, ref_tok, tokens)
            own = own_tokenization(tok, corpus.text, tokens)
            if s.max_tokens is not None:
                tokens = tokens[:s.max_tokens]
            if tok.add_bos:
                tokens = np.concatenate([[tok.bos_id], tokens]).astype(np.int32)
            wins = windows.chunked(tokens, s.n_ctx, tok.bos_id if tok.add_bos else None)
            if not wins:
                raise ValueError(f"the text has {len(tokens)} tokens, fewer than one chunk of n_ctx={s.n_ctx}")
            positions = PositionStats()
            window_kld = []
            start = time.perf_counter()
            for w in wins:
                ref_rows, cand_rows = (np.concatenate([rows for _, _, rows in b.logprobs([w])])
                                       for b in (reference, backend))
                window_kld.append(positions.add(ref_rows, cand_rows, w.targets))
            elapsed = time.perf_counter() - start
        finally:
            reference.close()
        values = positions.arrays()
        measurements, tables = summarize(values)
        return TaskResult(measurements, samples={"window_kld": window_kld},
                          resolved={"window": "chunked", "n_ctx": s.n_ctx, "add_bos": tok.add_bos,
                                    "candidate_own_tokenization": own,
                                    "windows": len(wins), "scoring_s": elapsed,
                                    "method": "streamed: both models score each window in turn", **tables})
