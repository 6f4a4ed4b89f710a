"""Next-token choice from a full distribution: temperature, top-k, top-p, greedy, seeds."""

import numpy as np
import pytest

from harness.sampling import Decoding, choose, entropy_nats, shape

P = np.array([0.5, 0.25, 0.15, 0.1])


def test_temperature_is_power_of_probabilities():
    for t in (0.5, 2.0):
        expected = P ** (1 / t) / (P ** (1 / t)).sum()
        np.testing.assert_allclose(shape(P, Decoding(temperature=t)), expected)


def test_greedy_top_k_and_top_p():
    np.testing.assert_array_equal(shape(P, Decoding(temperature=0)), [1, 0, 0, 0])
    np.testing.assert_allclose(shape(P, Decoding(top_k=2)), [2 / 3, 1 / 3, 0, 0])
    # the smallest set whose mass reaches 0.8: 0.5 + 0.25 + 0.15
    np.testing.assert_allclose(shape(P, Decoding(top_p=0.8)), [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0])
    np.testing.assert_allclose(shape(P, Decoding(top_p=0.75)), [0.5 / 0.75, 0.25 / 0.75, 0, 0])


def test_sampling_follows_the_distribution_and_the_seed():
    rng = np.random.default_rng(0)
    draws = [choose(P, Decoding(), rng) for _ in range(20000)]
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 20000, P, atol=0.015)
    a = [choose(P, Decoding(), np.random.default_rng(7)) for _ in range(5)]
    b = [choose(P, Decoding(), np.random.default_rng(7)) for _ in range(5)]
    assert a == b


def test_entropy():
    assert entropy_nats(np.array([0.5, 0.5, 0.0])) == pytest.approx(np.log(2))
