"""A count-based n-gram language model held in numpy arrays: interpolated modified Kneser–Ney, or
stupid back-off for generation.

Why it is small: the training stream is sorted once by its first ``order`` tokens (a depth-limited
suffix array), which groups equal grams of every order at once. A gram seen only once is never stored:
all its counts are 1 and its only continuation is the next token of the training text, so a pointer
into the text (its start position) stands for it. Only grams seen at least twice get a row, and the
children of every such row sit in one sorted table per order, keyed by ``parent_row * vocab + token``.
On four Austen novels at order 8 that is under a million rows instead of 3.3 million grams.

A *state* is how a gram is referred to during a query: ``>= 0`` a row of its order, ``<= -1`` an
unstored gram starting at text position ``-state - 1``, :data:`ABSENT` a gram never seen in training.

Kneser–Ney as in Chen & Goodman (1998) and KenLM: the highest order uses raw counts, lower orders
continuation counts (distinct left neighbours), except grams that start with the boundary token, which
keep raw counts because nothing can precede them; three discounts per order from counts of counts; the
unigram level interpolates with the uniform distribution, so every token gets a finite probability.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.atomic import atomic_write

ABSENT = np.iinfo(np.int64).min
#: stupid back-off's fixed weight (Brants et al., 2007)
STUPID_BACKOFF_ALPHA = 0.4


@dataclass
class Level:
    """Rows of one order: grams seen at least twice (order 1: every vocabulary id)."""

    raw: np.ndarray            # raw count of each row
    adj: np.ndarray            # Kneser–Ney adjusted count of each row
    # as a history of the next order (absent on the highest order):
    total: np.ndarray | None = None    # Σ adjusted counts of its children
    backoff: np.ndarray | None = None  # γ: discounted mass handed to the lower order, / total
    follow: np.ndarray | None = None   # Σ raw counts of its children (stupid back-off's denominator)
    # children of the previous order's rows, sorted (absent on order 1):
    child_keys: np.ndarray | None = None  # parent_row * vocab + token
    child_refs: np.ndarray | None = None  # the child's state


@dataclass
class NgramModel:
    order: int
    vocab_size: int
    boundary: int
    stream: np.ndarray                     # the training tokens, documents separated by ``boundary``
    levels: list[Level]                    # levels[k - 1] holds order k
    discounts: np.ndarray                  # [order, 4]: D(0)=0, D(1), D(2), D(3+)
    meta: dict = field(default_factory=dict)

    # ---------------------------------------------------------------- queries

    def unigram(self) -> np.ndarray:
        """p(w) at order 1, interpolated with the uniform distribution over the vocabulary."""
        lvl, d = self.levels[0], self.discounts[0]
        adj = lvl.adj.astype(np.float64)
        total = adj.sum()
        disc = d[np.minimum(lvl.adj, 3)]
        gamma = disc[lvl.adj > 0].sum() / total
        return np.maximum(adj - disc, 0) / total + gamma / self.vocab_size

    def states(self, seq: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
        """For every order k, the state of the k-gram ending at each position of ``seq``; a gram
        reaching before its position's ``starts`` (the window it belongs to) is ABSENT."""
        seq = np.asarray(seq, dtype=np.int64)
        positions = np.arange(len(seq))
        out = [seq.copy()]
        for k in range(2, self.order + 1):
            prev = np.empty(len(seq), dtype=np.int64)
            prev[0] = ABSENT
            prev[1:] = out[-1][:-1]
            out.append(self._extend(prev, seq, k, positions - k + 1 >= starts))
        return out

    def _extend(self, prev: np.ndarray, tokens: np.ndarray, k: int, fits: np.ndarray) -> np.ndarray:
        """States of order k from the states of their (k-1)-token prefixes and their last tokens."""
        lvl = self.levels[k - 1]
        state = np.full(len(prev), ABSENT, dtype=np.int64)
        stored = np.flatnonzero((prev >= 0) & fits)
        if len(stored) and len(lvl.child_keys):
            keys = prev[stored] * self.vocab_size + tokens[stored]
            idx = np.searchsorted(lvl.child_keys, keys)
            idx_c = np.minimum(idx, len(lvl.child_keys) - 1)
            hit = lvl.child_keys[idx_c] == keys
            state[stored[hit]] = lvl.child_refs[idx_c[hit]]
        once = np.flatnonzero((prev < 0) & (prev != ABSENT) & fits)
        if len(once):
            nxt = -prev[once] - 1 + k - 1
            inside = nxt < len(self.stream)
            ok = np.zeros(len(once), dtype=bool)
            ok[inside] = self.stream[nxt[inside]] == tokens[once[inside]]
            state[once[ok]] = prev[once[ok]]
        return state

    def _history(self, k: int, hist: np.ndarray):
        """(total, backoff, follow) of histories of order k-1 predicting order k; total 0: no data."""
        lvl, n = self.levels[k - 2], len(hist)
        total, backoff, follow = np.zeros(n), np.zeros(n), np.zeros(n)
        stored = hist >= 0
        total[stored] = lvl.total[hist[stored]]
        backoff[stored] = lvl.backoff[hist[stored]]
        follow[stored] = lvl.follow[hist[stored]]
        once = (hist < 0) & (hist != ABSENT)
        has_next = np.zeros(n, dtype=bool)
        has_next[once] = -hist[once] - 1 + k - 1 < len(self.stream)
        total[has_next] = follow[has_next] = 1.0
        backoff[has_next] = self.discounts[k - 1, 1]
        return total, backoff, follow

    def _counts(self, k: int, gram: np.ndarray, which: str) -> np.ndarray:
        out = np.zeros(len(gram))
        stored = gram >= 0
        out[stored] = getattr(self.levels[k - 1], which)[gram[stored]]
        out[(gram < 0) & (gram != ABSENT)] = 1.0
        return out

    def logprob(self, seq: np.ndarray, starts: np.ndarray, scored: np.ndarray) -> np.ndarray:
        """Natural-log Kneser–Ney probability of ``seq[j]`` given the tokens before it (back to
        ``starts[j]``), for each index j in ``scored``."""
        states = self.states(seq, starts)
        tokens = np.asarray(seq, dtype=np.int64)[scored]
        has_context = scored > np.asarray(starts)[scored]
        before = np.maximum(scored - 1, 0)
        p = self.unigram()[tokens]
        for k in range(2, self.order + 1):
            hist = np.where(has_context, states[k - 2][before], ABSENT)
            gram = states[k - 1][scored]
            total, backoff, _ = self._history(k, hist)
            adj = self._counts(k, gram, "adj")
            disc = self.discounts[k - 1][np.minimum(adj, 3).astype(np.int64)]
            use = total > 0
            p[use] = np.maximum(adj[use] - disc[use], 0) / total[use] + backoff[use] * p[use]
        return np.log(p)

    def _children(self, k: int, hist: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens that follow history ``hist`` (a state of order k-1) and their states of order k."""
        if hist >= 0:
            keys = self.levels[k - 1].child_keys
            lo, hi = np.searchsorted(keys, [hist * self.vocab_size, (hist + 1) * self.vocab_size])
            return keys[lo:hi] - hist * self.vocab_size, self.levels[k - 1].child_refs[lo:hi]
        nxt = -hist - 1 + k - 1
        if nxt >= len(self.stream):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.array([self.stream[nxt]], np.int64), np.array([hist], np.int64)

    def next_distribution(self, context: np.ndarray, smoothing: str = "kneser-ney") -> np.ndarray:
        """The probability of every vocabulary id following ``context``.

        Kneser–Ney sums to 1 by construction. Stupid back-off scores are not a distribution; they are
        divided by their sum here so that they can be sampled from, and never used as perplexity."""
        context = np.asarray(context, dtype=np.int64)[max(0, len(context) - self.order + 1):]
        hists = ([s[-1] for s in self.states(context, np.zeros(len(context), np.int64))]
                 if self.order > 1 and len(context) else [])
        if smoothing == "stupid-backoff":
            raw = self.levels[0].raw.astype(np.float64)
            p = raw / raw.sum()
        else:
            p = self.unigram()
        for k in range(2, len(hists) + 2):
            hist = int(hists[k - 2])
            if hist == ABSENT:
                break
            total, backoff, follow = (float(a[0]) for a in self._history(k, np.array([hist])))
            if total == 0:
                break
            toks, grams = self._children(k, hist)
            if smoothing == "stupid-backoff":
                p = STUPID_BACKOFF_ALPHA * p
                p[toks] = self._counts(k, grams, "raw") / follow
            else:
                adj = self._counts(k, grams, "adj")
                disc = self.discounts[k - 1][np.minimum(adj, 3).astype(np.int64)]
                p = backoff * p
                p[toks] += np.maximum(adj - disc, 0) / total
        if smoothing == "stupid-backoff":
            p = p / p.sum()
        return p

    # ---------------------------------------------------------------- storage

    def n_bytes(self) -> int:
        arrays = [self.stream, self.discounts] + [a for lvl in self.levels for a in vars(lvl).values()
                                                   if a is not None]
        return int(sum(a.nbytes for a in arrays))

    def save(self, path: Path) -> None:
        arrays = {"stream": self.stream, "discounts": self.discounts}
        for k, lvl in enumerate(self.levels, start=1):
            arrays.update({f"{name}_{k}": a for name, a in vars(lvl).items() if a is not None})
        meta = {**self.meta, "order": self.order, "vocab_size": self.vocab_size, "boundary": self.boundary}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: Path) -> NgramModel:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            order = meta.pop("order")
            levels = [Level(**{name: data[f"{name}_{k}"] for name in Level.__dataclass_fields__
                               if f"{name}_{k}" in data}) for k in range(1, order + 1)]
            return cls(order=order, vocab_size=meta.pop("vocab_size"), boundary=meta.pop("boundary"),
                       stream=data["stream"], levels=levels, discounts=data["discounts"], meta=meta)


# -------------------------------------------------------------------- training


def modified_kn_discounts(adj: np.ndarray) -> np.ndarray:
    """D(0..3+) from counts of counts (Chen & Goodman). Tiny corpora lack some counts of counts; then
    every D falls back to Ney's single discount n1/(n1+2n2), which stays inside (0, 1)."""
    n = [int(np.count_nonzero(adj == r)) for r in (1, 2, 3, 4)]
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


def build(stream: np.ndarray, order: int, vocab_size: int, boundary: int) -> NgramModel:
    """Count every gram of ``stream`` up to ``order`` and derive the Kneser–Ney statistics.

    ``stream`` must start and end with ``boundary``, which also separates documents."""
    if order < 1:
        raise ValueError("order must be at least 1")
    stream = np.ascontiguousarray(stream, dtype=np.int32)
    n = len(stream)
    if n < 2 or stream[0] != boundary or stream[-1] != boundary:
        raise ValueError("the training stream must start and end with the boundary token")
    pad = np.full(n + order, vocab_size, dtype=np.int32)  # vocab_size sorts after every real id
    pad[:n] = stream
    sa = np.lexsort([pad[k:k + n] for k in reversed(range(order))]).astype(np.int64)
    lcp = _common_prefix(pad, sa, order, vocab_size)
    del pad

    levels, discounts = [], np.zeros((order, 4))
    prev_gid = prev_rows = prev_explicit = None
    for k in range(1, order + 1):
        starts = lcp < k
        gid = np.cumsum(starts) - 1                       # group of each suffix-array slot
        gstart = np.flatnonzero(starts)
        size = np.diff(np.append(gstart, n))
        pos = sa[gstart]                                  # one occurrence of each group
        valid = pos <= n - k                              # the gram fits before the stream ends
        first = stream[pos]
        adj = np.where(valid, size, 0)
        if k < order:
            _continuation_counts(adj, valid & (size >= 2) & (first != boundary), gid, sa, stream,
                                 vocab_size)
        discounts[k - 1] = modified_kn_discounts(adj[valid])

        if k == 1:  # every vocabulary id has a row, and its row number is the id
            token = first
            explicit = valid
            rows = np.where(valid, token, -1)
            raw = np.zeros(vocab_size, np.int64)
            a = np.zeros(vocab_size, np.int64)
            raw[token[valid]], a[token[valid]] = size[valid], adj[valid]
            level = Level(raw=_smallest_uint(raw), adj=_smallest_uint(a))
        else:
            explicit = valid & (size >= 2)
            rows = np.where(explicit, np.cumsum(explicit) - 1, -1)
            level = Level(raw=_smallest_uint(size[explicit]), adj=_smallest_uint(adj[explicit]))
            parent = prev_gid[gstart]                     # the (k-1)-prefix group of each k-group
            _history_stats(levels[-1], parent, prev_rows, prev_explicit, valid, size, adj,
                           discounts[k - 1])
            child = valid & prev_explicit[parent]
            token = stream[pos[child] + k - 1].astype(np.int64)
            level.child_keys = prev_rows[parent[child]] * vocab_size + token
            level.child_refs = np.where(explicit[child], rows[child], -pos[child] - 1)
        levels.append(level)
        prev_gid, prev_rows, prev_explicit = gid, rows, explicit
    return NgramModel(order=order, vocab_size=vocab_size, boundary=boundary, stream=stream,
                      levels=levels, discounts=discounts)


def _common_prefix(pad: np.ndarray, sa: np.ndarray, order: int, pad_id: int) -> np.ndarray:
    """lcp[i]: tokens shared by the suffixes at sa[i-1] and sa[i], capped at ``order`` (lcp[0] = 0)."""
    lcp = np.zeros(len(sa), dtype=np.uint8)
    alive = np.ones(len(sa) - 1, dtype=bool)
    for k in range(order):
        a, b = pad[sa[:-1] + k], pad[sa[1:] + k]
        alive &= (a == b) & (a != pad_id)
        lcp[1:] += alive
    return lcp


def _continuation_counts(adj, todo, gid, sa, stream, vocab_size) -> None:
    """adj[g] = number of distinct tokens preceding the occurrences of group g, where ``todo[g]``.
    (A gram seen once has one left neighbour, so its raw count already is its continuation count.)"""
    slots = np.flatnonzero(todo[gid])
    if not len(slots):
        return
    pred = stream[sa[slots] - 1].astype(np.int64)
    pairs = np.unique(gid[slots] * vocab_size + pred)
    distinct = np.bincount(pairs // vocab_size, minlength=len(adj))
    adj[todo] = distinct[todo]


def _history_stats(parent_level, parent, prev_rows, prev_explicit, valid, size, adj, d) -> None:
    """Per stored (k-1)-gram: total, back-off weight and raw follow count over its k-gram children."""
    groups, v = len(prev_explicit), valid
    total = np.bincount(parent[v], weights=adj[v], minlength=groups)
    follow = np.bincount(parent[v], weights=size[v], minlength=groups)
    mass = np.bincount(parent[v], weights=d[np.minimum(adj[v], 3)], minlength=groups)
    rows = prev_rows[prev_explicit]
    n_rows = len(parent_level.raw)
    parent_level.total, parent_level.follow, parent_level.backoff = (np.zeros(n_rows) for _ in range(3))
    parent_level.total[rows] = total[prev_explicit]
    parent_level.follow[rows] = follow[prev_explicit]
    has = total[prev_explicit] > 0
    parent_level.backoff[rows[has]] = mass[prev_explicit][has] / total[prev_explicit][has]
