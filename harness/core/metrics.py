"""Metric names (contract), their units and directions, and the measurement record tasks return."""

from __future__ import annotations

import math
from dataclasses import dataclass

#: name -> (unit, higher_is_better). Names are stable: nightly comparisons key on them.
METRICS: dict[str, tuple[str, bool]] = {
    # perplexity
    "token_ppl": ("ppl", False),
    "bits_per_byte": ("bits/byte", False),
    "word_ppl": ("ppl", False),
    "nll_mean": ("nats/token", False),
    "tokens_scored": ("tokens", True),
    "bytes_scored": ("bytes", True),
    # vs a reference (kld)
    "kld_mean": ("nats", False),
    "kld_p99": ("nats", False),
    "kld_max": ("nats", False),
    "kld_median": ("nats", False),
    "same_top1": ("ratio", True),
    "delta_p_mean": ("probability", True),
    "delta_p_rms": ("probability", False),
    "ref_token_ppl": ("ppl", False),
    "ppl_ratio": ("ratio", False),
    "ln_ppl_ratio": ("nats/token", False),
    # throughput
    "prefill_tok_s": ("tokens/s", True),
    "decode_tok_s": ("tokens/s", True),
    "ttft_s": ("s", False),
    "itl_p50_s": ("s", False),
    "itl_p99_s": ("s", False),
    # throughput against the machine's ceilings (harness.core.roofline, harness.results.probe)
    "decode_bytes_per_token": ("bytes", False),
    "decode_gb_s": ("GB/s", True),
    "mbu": ("ratio", True),
    "prefill_flop_s": ("FLOP/s", True),
    "mfu": ("ratio", True),
    # tokenization
    "tokens_per_byte": ("tokens/byte", False),
    "tokens_per_word": ("tokens/word", False),
    "tokenize_mb_s": ("MB/s", True),
    "differing_tokens": ("tokens", False),
    # decoding
    "distinct_1": ("ratio", True),
    "distinct_2": ("ratio", True),
    "rep_4gram": ("ratio", False),
    "len_mean": ("tokens", True),
    "entropy_mean": ("nats", True),
    "max_prob_mean": ("probability", False),
    "ref_nll_mean": ("nats/token", False),
    "deterministic": ("flag", True),
    # lm-evaluation-harness (harness.tasks.lmeval): lm-eval's own metric names, prefixed so that none is
    # mistaken for the harness's (its bits_per_byte counts a document's bytes, ours a window scheme's)
    "lmeval_acc": ("ratio", True),
    "lmeval_acc_norm": ("ratio", True),
    "lmeval_acc_mutual_info": ("ratio", True),
    "lmeval_exact_match": ("ratio", True),
    "lmeval_f1": ("ratio", True),
    "lmeval_mcc": ("ratio", True),
    "lmeval_perplexity": ("ppl", False),
    "lmeval_word_perplexity": ("ppl", False),
    "lmeval_byte_perplexity": ("ppl", False),
    "lmeval_bits_per_byte": ("bits/byte", False),
    # every cell
    "load_s": ("s", False),
    "model_bytes": ("bytes", False),
    "peak_rss_mb": ("MiB", False),
    "peak_vram_mb": ("MiB", False),
    "scored_tok_s": ("tokens/s", True),
}


@dataclass
class Measurement:
    """One metric of one cell; becomes one row of the results table."""

    metric: str
    value: float
    n: int | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    stderr: float | None = None

    def __post_init__(self):
        if self.metric not in METRICS:
            raise KeyError(f"unknown metric {self.metric!r}: add it to harness.core.metrics.METRICS")

    def row(self) -> dict:
        unit, higher = METRICS[self.metric]
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in (("ci_low", self.ci_low), ("ci_high", self.ci_high), ("stderr", self.stderr))}
        return {"metric": self.metric, "value": float(self.value), "unit": unit,
                "higher_is_better": higher, "n": self.n, **clean}
