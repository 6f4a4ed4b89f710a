"""Training an n-gram model: the training stream sorted once by its first ``order`` tokens, every order's
rows and children built from it a block at a time (see :mod:`harness.backends.ngram.model` for the
layout the build produces and why), Kneser–Ney discounts from counts of counts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harness.backends.ngram.model import Level, NgramModel


def modified_kn_discounts(adj: np.ndarray, seen_once: int = 0) -> np.ndarray:
    """D(0..3+) from counts of counts (Chen & Goodman) of the adjusted counts ``adj`` and of
    ``seen_once`` further grams whose adjusted count is 1 (grams seen once, which the build never
    lists). Tiny corpora lack some counts of counts; then every D falls back to Ney's single discount
    n1/(n1+2n2), which stays inside (0, 1)."""
    n = [int(np.count_nonzero(adj == r)) for r in (1, 2, 3, 4)]
    n[0] += seen_once
    fallback = n[0] / (n[0] + 2 * n[1]) if n[0] else 0.5
    d = np.array([0.0, fallback, fallback, fallback])
    if all(n):
        y = n[0] / (n[0] + 2 * n[1])
        cg = [r - (r + 1) * y * n[r] / n[r - 1] for r in (1, 2, 3)]
        d[1:] = [v if 0 < v <= r else fallback for r, v in zip((1, 2, 3), cg, strict=True)]
    return d


def _smallest_uint(values: np.ndarray) -> np.ndarray:
    top = int(values.max()) if len(values) else 0
    return values.astype(np.min_scalar_type(top))


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type holding every id and ``vocab_size`` itself (the padding id)."""
    return np.min_scalar_type(vocab_size)


def training_stream(documents: list[np.ndarray], boundary: int, vocab_size: int) -> np.ndarray:
    """Documents' token ids joined into one stream that starts, ends and is separated by ``boundary``."""
    stream = np.empty(sum(len(d) for d in documents) + len(documents) + 1, dtype=token_dtype(vocab_size))
    stream[0] = boundary
    at = 1
    for doc in documents:
        stream[at:at + len(doc)] = doc
        stream[at + len(doc)] = boundary
        at += len(doc) + 1
    return stream


#: items (slots of the suffix order, or stream positions) per step of every pass over the training
#: stream, so that a pass's temporaries stay small however long the stream is
_CHUNK = 1 << 14


@dataclass
class _SuffixOrder:
    """The stream's positions sorted by their next ``order`` tokens (a depth-limited suffix array):
    every gram of every order up to ``order`` is one run of consecutive slots."""

    sa: np.ndarray   # int32: the positions in sorted order ("slots")
    lcp: np.ndarray  # uint8: tokens the grams at slots i-1 and i share, capped at ``order`` (lcp[0] = 0)


@dataclass
class _Runs:
    """Grams of one order as runs of slots: a k-gram's occurrences are one run, which the runs of the
    (k+1)-grams that extend it split."""

    first: np.ndarray  # int32: the run's first slot
    size: np.ndarray   # int32: the run's length, the gram's raw count
    row: np.ndarray | None = None  # each run's row number where it is not its index (order 1: the token)


def build(stream: np.ndarray, order: int, vocab_size: int, boundary: int) -> NgramModel:
    """Count every gram of ``stream`` up to ``order`` and derive the Kneser–Ney statistics.

    ``stream`` must start and end with ``boundary``, which also separates documents. One sort of the
    stream's positions by their next ``order`` tokens groups equal grams of every order. Each order
    then visits only the children of the previous order's stored grams, a block of them at a time,
    so that memory beyond the model, the stream and that sort stays a small fraction of the stream."""
    if order < 1:
        raise ValueError("order must be at least 1")
    if len(stream) and not 0 <= np.min(stream) <= np.max(stream) < vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size})")
    stream = np.ascontiguousarray(stream, dtype=token_dtype(vocab_size))
    if len(stream) < 2 or stream[0] != boundary or stream[-1] != boundary:
        raise ValueError("the training stream must start and end with the boundary token")
    so = _suffix_order(stream, order, vocab_size)
    discounts = np.zeros((order, 4))
    level, parents = _unigrams(stream, so, order, vocab_size, boundary, discounts)
    levels = [level]
    for k in range(2, order + 1):
        level, parents = _level(k, stream, so, order, vocab_size, boundary, parents, levels[-1], discounts)
        levels.append(level)
    return NgramModel(order=order, vocab_size=vocab_size, boundary=boundary, stream=stream,
                      levels=levels, discounts=discounts)


def _unigrams(stream: np.ndarray, so: _SuffixOrder, order: int, vocab_size: int, boundary: int,
              discounts: np.ndarray) -> tuple[Level, _Runs]:
    """Order 1: every vocabulary id has a row, and its row number is the id."""
    first = np.flatnonzero(so.lcp == 0).astype(np.int32)
    runs = _Runs(first=first, size=np.diff(first, append=np.int32(len(stream))))
    runs.row = token = stream[so.sa[first]]
    adj = _adjusted(1, runs, token, stream, so, order, boundary)
    discounts[0] = modified_kn_discounts(adj)
    raw, a = np.zeros(vocab_size, np.int64), np.zeros(vocab_size, np.int64)
    raw[token], a[token] = runs.size, adj
    return Level(raw=_smallest_uint(raw), adj=_smallest_uint(a)), runs


@dataclass
class _Children:
    """The k-grams that extend one block of stored (k-1)-grams and fit before the stream ends."""

    first: np.ndarray   # int32: first slot of the child's run
    size: np.ndarray    # int32: its raw count
    pos: np.ndarray     # int32: the start of one occurrence
    parent: np.ndarray  # the parent's row in the level of order k-1


def _level(k: int, stream: np.ndarray, so: _SuffixOrder, order: int, vocab_size: int, boundary: int,
           parents: _Runs, parent_level: Level, discounts: np.ndarray) -> tuple[Level, _Runs]:
    """Order k >= 2 from the stored (k-1)-grams ``parents``: their children (the k-grams that extend
    them) become child keys; the children seen at least twice become rows. A gram seen once is never
    stored, and its adjusted count is 1: its one occurrence has one left neighbour (or starts with the
    boundary, where the raw count 1 is kept).

    Two passes over the children, a block of parents at a time: the first finds the rows, whose
    adjusted counts give this order's discounts; the second, which needs the discounts, sums each
    parent's children and writes the child keys."""
    blocks = _blocks(parents.size, _CHUNK)
    firsts, sizes, n_children = [np.empty(0, np.int32)], [np.empty(0, np.int32)], 0
    for c in _children(k, stream, so, parents, blocks):
        firsts.append(c.first[c.size >= 2])
        sizes.append(c.size[c.size >= 2])
        n_children += len(c.pos)
    rows = _Runs(first=np.concatenate(firsts), size=np.concatenate(sizes))
    del firsts, sizes
    adj_rows = _smallest_uint(_adjusted(k, rows, stream[so.sa[rows.first]], stream, so, order, boundary))
    grams = int(np.count_nonzero(so.lcp < k)) - min(k - 1, len(stream))  # k-grams that fit: one run each
    d = modified_kn_discounts(adj_rows, seen_once=grams - len(rows.first))
    discounts[k - 1] = d

    n_rows = len(parent_level.raw)
    total, follow, mass = np.zeros(n_rows), np.zeros(n_rows), np.zeros(n_rows)
    # keys stay below (rows of order k-1) * vocab_size, so int32 holds them on most corpora
    keys = np.empty(n_children, np.int32 if n_rows * vocab_size <= np.iinfo(np.int32).max else np.int64)
    refs = np.empty(n_children, np.int32)
    at = row = 0
    for c in _children(k, stream, so, parents, blocks):
        explicit = c.size >= 2
        their_rows = np.arange(row, row + np.count_nonzero(explicit), dtype=np.int32)
        adj = np.ones(len(c.pos), adj_rows.dtype)
        adj[explicit] = adj_rows[their_rows]
        # children come in their parents' row order, a parent's all in one block, and bincount adds
        # them in order: the sums do not depend on the blocks
        span = slice(c.parent[0], c.parent[-1] + 1)
        local = c.parent - c.parent[0]
        total[span] += np.bincount(local, weights=adj)
        follow[span] += np.bincount(local, weights=c.size)
        mass[span] += np.bincount(local, weights=d[np.minimum(adj, 3)])
        keys[at:at + len(c.pos)] = c.parent.astype(keys.dtype) * vocab_size + stream[c.pos + k - 1]
        ref = -c.pos - 1
        ref[explicit] = their_rows
        refs[at:at + len(c.pos)] = ref
        at, row = at + len(c.pos), row + len(their_rows)
    parent_level.total, parent_level.follow = _smallest_uint(total), _smallest_uint(follow)
    parent_level.backoff = np.divide(mass, total, out=np.zeros(n_rows), where=total > 0)
    return Level(raw=_smallest_uint(rows.size), adj=adj_rows, child_keys=keys, child_refs=refs), rows


def _children(k: int, stream: np.ndarray, so: _SuffixOrder, parents: _Runs,
              blocks: list[tuple[int, int]]) -> Iterator[_Children]:
    """Per block of parents, their children. Inside a parent's run every lcp is >= k-1, so a child's
    run starts at the parent's first slot and wherever lcp is exactly k-1; the last child of a parent
    ends where the parent does."""
    for lo, hi in blocks:
        slots, parent = _slots(parents.first[lo:hi], parents.size[lo:hi])
        starts = np.flatnonzero(so.lcp[slots] < k)
        size = np.diff(starts, append=len(slots)).astype(np.int32)
        first = slots[starts]
        pos = so.sa[first]
        parent = parent[starts] + lo
        if parents.row is not None:
            parent = parents.row[parent]
        fits = pos <= len(stream) - k  # the few grams that run past the end are never counted
        if not fits.any():
            continue
        yield _Children(first=first[fits], size=size[fits], pos=pos[fits], parent=parent[fits])


def _slots(first: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The slots of consecutive runs, concatenated (int32), and each slot's run (0-based)."""
    run = np.repeat(np.arange(len(first), dtype=np.int32), size)
    offset = np.cumsum(size, dtype=np.int32) - size  # where each run starts in the concatenation
    return first[run] + (np.arange(len(run), dtype=np.int32) - offset[run]), run


def _blocks(weights: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Consecutive index ranges [lo, hi) of ``weights``, each weighing about ``target`` (a single
    heavy item may weigh more)."""
    if not len(weights):
        return []
    before = np.cumsum(weights) - weights
    edges = (np.flatnonzero(np.diff(before // target)) + 1).tolist()
    return list(zip([0, *edges], [*edges, len(weights)], strict=True))


def _adjusted(k: int, runs: _Runs, token: np.ndarray, stream: np.ndarray, so: _SuffixOrder, order: int,
              boundary: int) -> np.ndarray:
    """Kneser–Ney adjusted counts of k-grams given as runs (``token``: their first tokens): raw counts
    at the highest order and for grams that start with the boundary, continuation counts otherwise."""
    if k == order:
        return runs.size.copy()
    adj = _continuations(stream, so, runs)
    at_boundary = token == boundary
    adj[at_boundary] = runs.size[at_boundary]
    return adj


def _continuations(stream: np.ndarray, so: _SuffixOrder, runs: _Runs) -> np.ndarray:
    """Per run: the number of distinct tokens right before its occurrences, which is the number of
    distinct one-longer grams that end with it (each fits before the stream ends where the run's gram
    does). Position 0 has none; its grams start with the boundary and keep their raw counts."""
    counts = np.zeros(len(runs.first), np.int64)
    shift = 8 * stream.itemsize
    for lo, hi in _blocks(runs.size, _CHUNK):
        slots, run = _slots(runs.first[lo:hi], runs.size[lo:hi])
        left = stream[np.maximum(so.sa[slots] - 1, 0)]
        pairs = np.sort((run.astype(np.int64) << shift) | left)
        distinct = np.ones(len(pairs), dtype=bool)
        distinct[1:] = pairs[1:] != pairs[:-1]
        counts[lo:hi] = np.bincount(pairs[distinct] >> shift, minlength=hi - lo)
    return counts


def _suffix_order(stream: np.ndarray, order: int, vocab_size: int) -> _SuffixOrder:
    """Sort the stream's positions block by block, a block being a range of first tokens, so that the
    sort keys exist for one block at a time. Ties keep the positions' order."""
    n = len(stream)
    so = _SuffixOrder(sa=np.empty(n, np.int32), lcp=np.zeros(n, np.uint8))
    padded = np.append(stream, np.full(order, vocab_size, stream.dtype))  # vocab_size sorts after every id
    at = 0
    # each block costs a pass over the stream: at most ~32 of them, or more only for short streams
    for lo, hi in _blocks(np.bincount(stream, minlength=vocab_size), max(_CHUNK, n // 32)):
        pos = np.flatnonzero((stream >= lo) & (stream < hi)).astype(np.int32)
        pos = pos[_depth_order(padded, pos, order, vocab_size)]
        so.sa[at:at + len(pos)] = pos
        so.lcp[at + 1:at + len(pos)] = _common_prefix(padded, pos, order, vocab_size)
        at += len(pos)
    return so


def _depth_order(padded: np.ndarray, pos: np.ndarray, order: int, pad_id: int) -> np.ndarray:
    """The stable order that sorts ``pos`` by the next ``order`` tokens of each position. As many
    tokens as fit are packed into each 63-bit key (4 per key for a 13k-word vocabulary); the keys'
    dense ranks are combined pairwise, so that every sort is numpy's fast (unstable) sort of int64."""
    bits = int(pad_id).bit_length()
    per_key = max(1, 63 // bits)
    index_bits = int(len(pos)).bit_length()
    rank = None
    for j in range(0, order, per_key):
        key = np.zeros(len(pos), dtype=np.int64)
        for i in range(j, min(j + per_key, order)):
            key <<= bits
            key |= padded[pos + i]
        key = np.unique(key, return_inverse=True)[1]
        rank = key if rank is None else np.unique((rank << index_bits) | key, return_inverse=True)[1]
    index = np.arange(len(pos), dtype=np.int64)
    return np.sort((rank << index_bits) | index) & ((1 << index_bits) - 1)


def _common_prefix(padded: np.ndarray, pos: np.ndarray, order: int, pad_id: int) -> np.ndarray:
    """Tokens shared by the grams at pos[i-1] and pos[i] (i >= 1), capped at ``order``."""
    lcp = np.zeros(max(len(pos) - 1, 0), dtype=np.uint8)
    alive = np.ones(len(lcp), dtype=bool)
    for k in range(order):
        token = padded[pos + k]
        alive &= (token[:-1] == token[1:]) & (token[1:] != pad_id)
        lcp += alive
    return lcp
