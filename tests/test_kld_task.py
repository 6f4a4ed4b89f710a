"""The kld task: llama-perplexity's statistics checked by hand on unigram models whose distributions
are fixed, a model against itself, and the refusal of a pair whose tokenizers differ."""

import math

import numpy as np
import pytest
from tiny_backend import UnigramBackend

from harness.data import Corpus
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
    with pytest.raises(ValueError, match="tokenizer differs"):
        run(UnigramBackend({"a": 0.5, "b": 0.3, "c": 0.1, "d": 0.1}), UnigramBackend(P))
