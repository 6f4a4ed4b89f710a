"""The n-gram build works a block of slots at a time to keep its memory small; the model it builds
must not depend on the block size (every block boundary case is hit with blocks of 1 and 7 slots)."""

import numpy as np
import pytest
from test_ngram_model import B, zipf_stream

import harness.backends.ngram.build as ngram_model

pytestmark = pytest.mark.ngram


@pytest.mark.parametrize("chunk", [1, 7])
def test_small_blocks_build_the_same_model(monkeypatch, chunk):
    stream, vocab = zipf_stream(seed=5)
    whole = ngram_model.build(stream, 6, vocab, B)
    monkeypatch.setattr(ngram_model, "_CHUNK", chunk)
    blocks = ngram_model.build(stream, 6, vocab, B)
    np.testing.assert_array_equal(blocks.discounts, whole.discounts)
    for a, b in zip(blocks.levels, whole.levels, strict=True):
        assert vars(a).keys() == vars(b).keys()
        for name, array in vars(a).items():
            np.testing.assert_array_equal(array, vars(b)[name], err_msg=name)
