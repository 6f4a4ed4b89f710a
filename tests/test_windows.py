"""The three window schemes, pinned on small cases worked out by hand from each reference tool's code."""

import numpy as np
import pytest

from harness.core import windows


def as_lists(ws):
    return [(w.input_ids.tolist(), w.labels.tolist()) for w in ws]


def test_chunked_matches_llama_perplexity_by_hand():
    # llama-perplexity, n_ctx=4: chunks [0..3], [4..7] (8, 9 left over), first token -> BOS (99),
    # logits at positions first=2 .. n_ctx-2=2 scored: one target per chunk, chunk[3].
    ws = windows.chunked(np.arange(10), n_ctx=4, bos_id=99)
    assert as_lists(ws) == [([99, 1, 2, 3], [-1, -1, 3, -1]), ([99, 5, 6, 7], [-1, -1, 7, -1])]


def test_chunked_without_bos_keeps_first_token():
    ws = windows.chunked(np.arange(8), n_ctx=8, bos_id=None)
    assert as_lists(ws) == [(list(range(8)), [-1, -1, -1, -1, 5, 6, 7, -1])]


def test_chunked_scores_n_ctx_minus_half_minus_one_per_chunk():
    ws = windows.chunked(np.arange(5000), n_ctx=512, bos_id=1)
    assert len(ws) == 9
    assert all(len(w.targets) == 512 - 256 - 1 for w in ws)


def test_sliding_matches_hf_guide_by_hand():
    # HF guide, max_length=4, stride=2 over 10 tokens: windows begin at 0, 2, 4, 6; trg_len 4, 2, 2, 2.
    ws = windows.sliding(np.arange(10), n_ctx=4, stride=2)
    assert as_lists(ws) == [
        ([0, 1, 2, 3], [1, 2, 3, -1]),
        ([2, 3, 4, 5], [-1, 4, 5, -1]),
        ([4, 5, 6, 7], [-1, 6, 7, -1]),
        ([6, 7, 8, 9], [-1, 8, 9, -1]),
    ]


def test_rolling_matches_lm_eval_by_hand():
    # lm-eval get_rolling_token_windows(max_seq_len=4, context_len=1, prefix 99) + make_disjoint_window.
    ws = windows.rolling(np.arange(10), n_ctx=4, prefix_id=99)
    assert as_lists(ws) == [
        ([99, 0, 1, 2], [0, 1, 2, 3]),
        ([3, 4, 5, 6], [4, 5, 6, 7]),
        ([5, 6, 7, 8], [-1, -1, 8, 9]),
    ]


@pytest.mark.parametrize("n,n_ctx,stride", [(1, 4, 2), (7, 4, 1), (100, 16, 5), (257, 64, 64), (64, 64, 32)])
def test_every_label_is_the_next_token_of_the_stream(n, n_ctx, stride):
    tokens = np.arange(1000, 1000 + n)
    for ws, first_scored in ((windows.sliding(tokens, n_ctx, stride), 1), (windows.rolling(tokens, n_ctx, 7), 0)):
        scored = np.concatenate([w.targets for w in ws])
        expected = tokens[first_scored:]
        if first_scored and stride == n_ctx:
            # HF's loop with stride == max_length: a window's first token is labelled but, having no
            # context inside the window, is dropped by the shift; the guide's number has the same gap.
            expected = np.delete(tokens, np.arange(0, n, n_ctx))
        # each token scored exactly once, in order; sliding can never score the very first token
        assert scored.tolist() == expected.tolist()
        for w in ws:
            assert len(w.input_ids) <= n_ctx
            for p in w.scored_positions:
                if p + 1 < len(w.input_ids):
                    assert w.labels[p] == w.input_ids[p + 1]
