"""The three ways to cut a token stream into scored windows; each reproduces one reference tool.

Every function returns :class:`~harness.core.types.Window` objects whose labels say which positions
are scored, so a backend only has to evaluate logits and read off log-probabilities.
"""

from __future__ import annotations

import numpy as np

from harness.core.types import Window

SCHEMES = ("chunked", "sliding", "rolling")


def chunked(tokens: np.ndarray, n_ctx: int, bos_id: int | None) -> list[Window]:
    """llama-perplexity: disjoint chunks of ``n_ctx``; the first token of each chunk replaced by BOS
    (when the model adds one); only the second half is scored, each target seeing at least
    ``n_ctx // 2`` tokens of context. ``tokens`` must already start with BOS if the model adds one."""
    n_chunks = len(tokens) // n_ctx
    first = n_ctx // 2
    windows = []
    for c in range(n_chunks):
        chunk = np.array(tokens[c * n_ctx:(c + 1) * n_ctx], dtype=np.int32)
        if bos_id is not None:
            chunk[0] = bos_id
        labels = np.full(n_ctx, -1, dtype=np.int32)
        labels[first:n_ctx - 1] = chunk[first + 1:]
        windows.append(Window(chunk, labels, np.arange(c * n_ctx + first + 1, (c + 1) * n_ctx)))
    return windows


def sliding(tokens: np.ndarray, n_ctx: int, stride: int) -> list[Window]:
    """Hugging Face's strided perplexity guide: windows of ``n_ctx`` advancing by ``stride``; only the
    tokens new to each window are scored. The very first token has no context and is never scored."""
    tokens = np.asarray(tokens, dtype=np.int32)
    windows = []
    prev_end = 0
    for begin in range(0, len(tokens), stride):
        end = min(begin + n_ctx, len(tokens))
        inp = tokens[begin:end]
        labels = np.full(len(inp), -1, dtype=np.int32)
        new = end - prev_end  # targets inp[-new:], except inp[0], which nothing predicts
        first_target = max(len(inp) - new, 1)
        labels[first_target - 1:len(inp) - 1] = inp[first_target:]
        windows.append(Window(inp, labels, np.arange(begin + first_target, end)))
        prev_end = end
        if end == len(tokens):
            break
    return windows


def rolling(tokens: np.ndarray, n_ctx: int, prefix_id: int) -> list[Window]:
    """lm-evaluation-harness's rolling loglikelihood: disjoint windows that together score every
    token exactly once; the first is conditioned on a prefix token (BOS, else EOS), later ones on the
    ``n_ctx`` tokens before them."""
    tokens = np.asarray(tokens, dtype=np.int32)
    n = len(tokens)
    windows = []
    if n == 0:
        return windows
    first_len = min(n_ctx, n)
    inp = np.concatenate([[prefix_id], tokens[:first_len - 1]]).astype(np.int32)
    windows.append(Window(inp, tokens[:first_len], np.arange(first_len)))
    predicted = first_len
    while predicted < n:
        pred_len = min(n - predicted, n_ctx)
        end = predicted + pred_len
        inp = tokens[end - n_ctx - 1:end - 1]
        labels = np.full(n_ctx, -1, dtype=np.int32)
        labels[n_ctx - pred_len:] = tokens[end - pred_len:end]
        windows.append(Window(inp, labels, np.arange(end - pred_len, end)))
        predicted = end
    return windows
