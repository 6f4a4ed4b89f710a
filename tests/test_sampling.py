"""The harness's sampler: temperature, top-k, top-p, min-p, repetition penalty, greedy, seeds — each
checked against the distribution computed by hand."""

import numpy as np
import pytest

from harness.core.decoding import Decoding, Generation, entropy_nats
from harness.core.sampling import HarnessSampler, penalize, shape

pytestmark = pytest.mark.ngram

P = np.array([0.5, 0.25, 0.15, 0.1])
LOGP = np.log(P)


def test_temperature_is_power_of_probabilities():
    for t in (0.5, 2.0):
        expected = P ** (1 / t) / (P ** (1 / t)).sum()
        np.testing.assert_allclose(shape(LOGP, Decoding(temperature=t)), expected)


def test_greedy_top_k_top_p_and_min_p():
    np.testing.assert_array_equal(shape(LOGP, Decoding(temperature=0)), [1, 0, 0, 0])
    np.testing.assert_allclose(shape(LOGP, Decoding(top_k=2)), [2 / 3, 1 / 3, 0, 0])
    # the smallest set whose mass reaches 0.8: 0.5 + 0.25 + 0.15
    np.testing.assert_allclose(shape(LOGP, Decoding(top_p=0.8)), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0])
    np.testing.assert_allclose(shape(LOGP, Decoding(top_p=0.75)), [0.5 / 0.75, 0.25 / 0.75, 0, 0])
    # min-p 0.3: tokens at least 0.3 x 0.5 = 0.15 stay
    np.testing.assert_allclose(shape(LOGP, Decoding(min_p=0.3)), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0])
    # temperature first, then the truncations: T=2 flattens to p^0.5 before top-k keeps two
    flat = np.sqrt(P) / np.sqrt(P).sum()
    np.testing.assert_allclose(shape(LOGP, Decoding(temperature=2, top_k=2)),
                               [flat[0] / flat[:2].sum(), flat[1] / flat[:2].sum(), 0, 0])


def test_repetition_penalty_follows_ctrl_within_its_window():
    logits = np.array([2.0, -1.0, 0.5, 3.0])
    # tokens 0 and 1 are in the last two; token 3 fell out of the window
    got = penalize(logits, [3, 3, 0, 1, 1], Decoding(repetition_penalty=2.0, repetition_window=3))
    np.testing.assert_allclose(got, [1.0, -2.0, 0.5, 3.0])
    assert shape(logits, Decoding(temperature=0, repetition_penalty=4.0), [3]).argmax() == 0


def test_sampling_follows_the_distribution_and_the_seed():
    sampler = HarnessSampler(Decoding(seed=0), [])
    draws = [sampler.choose(LOGP, None) for _ in range(20000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, P, atol=0.015)
    a = HarnessSampler(Decoding(seed=7), [])
    b = HarnessSampler(Decoding(seed=7), [])
    assert [a.choose(LOGP, None) for _ in range(5)] == [b.choose(LOGP, None) for _ in range(5)]


def test_trace_describes_the_distribution_sampled_from():
    out = Generation()
    token = HarnessSampler(Decoding(top_k=2, seed=3), []).choose(LOGP, out)
    step = out.steps[0]
    assert step["token"] == token and step["p"] == pytest.approx([2 / 3, 1 / 3][token])
    assert out.entropy[0] == pytest.approx(entropy_nats(np.array([2 / 3, 1 / 3])))
    assert step["model_entropy"] == pytest.approx(entropy_nats(P))
    assert [t for t, _ in step["top"]] == [0, 1, 2, 3] and step["top"][0][1] == pytest.approx(0.5)


def test_entropy_rises_with_temperature_for_a_fixed_distribution():
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(size=50) * 3
        entropies = [entropy_nats(shape(logits, Decoding(temperature=t))) for t in (0.3, 0.7, 1.0, 1.5)]
        assert np.all(np.diff(entropies) > 0)


def test_labels_name_the_strategy():
    assert Decoding(temperature=0).label == "greedy"
    assert Decoding(temperature=1.0, top_p=0.9).label == "t1-topp0.9"
    assert Decoding(temperature=0.7, repetition_penalty=1.3).label == "t0.7-rep1.3w64"
    assert Decoding(beams=4).label == "beam4"


def test_entropy():
    assert entropy_nats(np.array([0.5, 0.5, 0.0])) == pytest.approx(np.log(2))
