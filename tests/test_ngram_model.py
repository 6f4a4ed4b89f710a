"""The n-gram model's numbers: Kneser–Ney by hand, against an independent dict implementation, and
normalized; stupid back-off as defined; storage round-trips."""

import math

import numpy as np
import pytest
from kn_reference import ReferenceKN

from harness.backends.ngram.build import build, modified_kn_discounts
from harness.backends.ngram.model import NgramModel

pytestmark = pytest.mark.ngram

B, A, BB, C = 0, 1, 2, 3  # boundary, "a", "b", "c"


def logprob(model, seq):
    seq = np.asarray(seq)
    return model.logprob(seq, np.zeros(len(seq), np.int64), np.arange(1, len(seq)))


def zipf_stream(seed=0, vocab=60, docs=5):
    rng = np.random.default_rng(seed)
    p = 1 / np.arange(1, vocab)
    p /= p.sum()
    stream = [B]
    for _ in range(docs):
        stream += list(rng.choice(np.arange(1, vocab), p=p, size=rng.integers(100, 300))) + [B]
    return np.array(stream), vocab


def test_bigram_kneser_ney_by_hand():
    # Training text "a b a b a c" between boundaries: <s> a b a b a c <s>.
    # Unigram continuation counts: a follows {<s>, b} -> 2, b -> 1, c -> 1; <s> keeps its raw count 2.
    # Counts of counts n1=2, n2=2, n3=0: too few for three discounts, so D = n1/(n1+2 n2) = 1/3.
    # p1(w) = (adj - 1/3)/6 + (4 * 1/3 / 6) / 4  ->  p1(a) = 1/3, p1(b) = p1(c) = 1/6, p1(<s>) = 1/3.
    # Bigrams (raw): <s>a 1, ab 2, ba 2, ac 1, c<s> 1 -> n1=3, n2=2 -> D = 3/7.
    # p(b|a) = (2 - 3/7)/3 + (2 * 3/7 / 3) * 1/6 = 4/7;  p(c|a) = (1 - 3/7)/3 + 2/7 * 1/6 = 5/21
    # p(a|b) = (2 - 3/7)/2 + (3/7 / 2) * 1/3 = 6/7;      p(a|<s>) = (1 - 3/7)/1 + 3/7 * 1/3 = 5/7
    model = build(np.array([B, A, BB, A, BB, A, C, B]), order=2, vocab_size=4, boundary=B)
    np.testing.assert_allclose(model.unigram(), [1 / 3, 1 / 3, 1 / 6, 1 / 6], rtol=1e-12)
    np.testing.assert_allclose(np.exp(logprob(model, [B, A, BB, A, C])), [5 / 7, 4 / 7, 6 / 7, 5 / 21],
                               rtol=1e-12)
    np.testing.assert_allclose(model.next_distribution([A]), [2 / 21, 2 / 21, 12 / 21, 5 / 21], rtol=1e-12)


def test_three_discounts_follow_chen_goodman():
    # n1..n4 = 10, 4, 2, 1: Y = 10/18; D1 = 1 - 2Y*4/10, D2 = 2 - 3Y*2/4, D3+ = 3 - 4Y*1/2
    adj = np.array([1] * 10 + [2] * 4 + [3] * 2 + [4] + [9])
    y = 10 / 18
    np.testing.assert_allclose(modified_kn_discounts(adj), [0, 1 - 0.8 * y, 2 - 1.5 * y, 3 - 2 * y])


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
def test_matches_an_independent_implementation(order):
    stream, vocab = zipf_stream()
    model = build(stream, order, vocab, B)
    reference = ReferenceKN(list(stream), order, vocab, B)
    rng = np.random.default_rng(1)
    # seen text (long matches, stored and unstored grams) followed by random unseen tokens
    seq = np.concatenate([[B], stream[200:280], rng.integers(1, vocab, size=40)])
    expected = [math.log(reference.prob(seq[j], seq[:j])) for j in range(1, len(seq))]
    np.testing.assert_allclose(logprob(model, seq), expected, rtol=0, atol=1e-12)


def test_windows_do_not_see_past_their_start():
    stream, vocab = zipf_stream()
    model = build(stream, 3, vocab, B)
    seq = stream[100:130]
    starts = np.where(np.arange(len(seq)) < 15, 0, 15)
    joined = model.logprob(seq, starts, np.arange(16, 30))
    alone = model.logprob(seq[15:], np.zeros(15, np.int64), np.arange(1, 15))
    np.testing.assert_array_equal(joined, alone)


def test_distribution_sums_to_one_and_agrees_with_scoring():
    stream, vocab = zipf_stream(seed=3)
    model = build(stream, 4, vocab, B)
    rng = np.random.default_rng(2)
    for _ in range(20):
        start = rng.integers(1, len(stream) - 10)
        context = stream[start:start + rng.integers(0, 6)]
        if rng.random() < 0.3:
            context = rng.integers(1, vocab, size=3)
        dist = model.next_distribution(context)
        assert abs(dist.sum() - 1) < 1e-12 and (dist > 0).all()
        target = rng.integers(1, vocab)
        seq = np.append(context, target)
        scored = model.logprob(seq, np.zeros(len(seq), np.int64), np.array([len(context)]))
        assert scored[0] == pytest.approx(math.log(dist[target]), abs=1e-12)


def test_stupid_backoff_is_relative_frequency_then_scaled_lower_order():
    model = build(np.array([B, A, BB, A, BB, A, C, B]), order=2, vocab_size=4, boundary=B)
    raw = np.array([2, 3, 2, 1]) / 8
    # after "a": b 2/3, c 1/3 seen; a and <s> back off to 0.4 * unigram relative frequency
    scores = np.array([0.4 * raw[0], 0.4 * raw[1], 2 / 3, 1 / 3])
    np.testing.assert_allclose(model.next_distribution([A], "stupid-backoff"), scores / scores.sum())


def test_saved_model_scores_identically(tmp_path):
    stream, vocab = zipf_stream()
    model = build(stream, 4, vocab, B)
    model.meta = {"train_s": 0.1}
    model.save(tmp_path / "m.npz")
    loaded = NgramModel.load(tmp_path / "m.npz")
    seq = np.concatenate([[B], stream[50:150]])
    np.testing.assert_array_equal(logprob(loaded, seq), logprob(model, seq))
    assert loaded.meta == {"train_s": 0.1} and loaded.order == 4
