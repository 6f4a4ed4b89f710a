"""The kld task: llama-perplexity's statistics checked by hand on unigram models whose distributions
are fixed, a model against itself, the refusal of a pair whose vocabularies differ, and the
reference's tokens scored by both."""

import math

import numpy as np
import pytest
from tiny_backend import UnigramBackend

from harness.sources.corpora import Corpus
from harness.tasks.kld import KldSettings, KldTask

TEXT = "abcab" * 200
P = {"a": 0.5, "b": 0.3, "c": 0.2}
Q = {"a": 0.35, "b": 0.45, "c": 0.2}


def run(candidate, reference, **kw):
    settings = KldSettings(type="kld", dataset="d", reference={"model": "r", "backend": "r"}, n_ctx=16, **kw)
    result = KldTask(settings, reference).run(candidate, Corpus("d", "test", TEXT, "0"))
    return {m.metric: m for m in result.measurements}, result


def test_statistics_by_hand():
    values, result = run(UnigramBackend(Q), UnigramBackend(P))
    kl = sum(P[c] * math.log(P[c] / Q[c]) for c in P)
    assert values["kld_mean"].value == pytest.approx(kl, rel=1e-9)
    assert values["kld_max"].value == pytest.approx(kl) and values["kld_p99"].value == pytest.approx(kl)
    # chunks of 16, the second half scored: positions 8..14 predict tokens 9..15 of each chunk
    targets = np.concatenate([np.array(list(TEXT[c * 16:(c + 1) * 16]))[9:16] for c in range(len(TEXT) // 16)])
    dp = np.array([Q[t] - P[t] for t in targets])
    assert values["tokens_scored"].value == len(targets) == 62 * 7
    assert values["delta_p_mean"].value == pytest.approx(dp.mean())
    assert values["delta_p_rms"].value == pytest.approx(math.sqrt((dp ** 2).mean()))
    assert values["same_top1"].value == 0.0  # P's most likely token is a, Q's is b
    nll_q = np.array([-math.log(Q[t]) for t in targets])
    nll_p = np.array([-math.log(P[t]) for t in targets])
    assert values["token_ppl"].value == pytest.approx(math.exp(nll_q.mean()))
    assert values["ref_token_ppl"].value == pytest.approx(math.exp(nll_p.mean()))
    assert values["ppl_ratio"].value == pytest.approx(math.exp((nll_q - nll_p).mean()))
    assert result.resolved["kld_percentiles"]["median"] == pytest.approx(kl)


def test_a_model_against_itself_diverges_nowhere():
    values, _ = run(UnigramBackend(P), UnigramBackend(P))
    assert values["kld_mean"].value == 0 and values["same_top1"].value == 1 and values["ppl_ratio"].value == 1
    assert values["delta_p_rms"].value == 0


def test_different_tokenizers_are_refused():
    with pytest.raises(ValueError, match="tokenizer differs.*vocabularies 5 vs 6"):
        run(UnigramBackend({"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1}), UnigramBackend(P))
    with pytest.raises(ValueError, match="tokenizer differs.*BOS"):
        run(UnigramBackend(P, bos=True), UnigramBackend(P))
    with pytest.raises(ValueError, match="tokenizer differs.*token 2 is b'c' vs b'd'"):
        run(UnigramBackend({"a": 0.5, "b": 0.3, "d": 0.2}), UnigramBackend(P))


def test_the_candidate_scores_the_references_tokens():
    """One vocabulary, two ways to split the text (as llama.cpp and transformers part on 2 of WikiText-2's
    303k SmolLM2 tokens): both models score the reference's ids, and the difference is reported."""
    merged = {"a": 0.3, "b": 0.2, "c": 0.1, "ab": 0.4}
    values, result = run(UnigramBackend(merged, merge=False), UnigramBackend(merged))
    assert values["kld_mean"].value == 0 and values["same_top1"].value == 1
    # the reference's tokens: "ab", "c", "ab" for every "abcab"; chunks of 16 score their last 7
    reference_tokens = 3 * len(TEXT) // 5
    assert values["tokens_scored"].value == reference_tokens // 16 * 7
    assert result.resolved["candidate_own_tokenization"] == {
        "tokens": len(TEXT), "reference_tokens": reference_tokens, "positions_that_differ": None}
