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
    _unigram: np.ndarray | None = field(default=None, init=False, repr=False, compare=False)

    # ---------------------------------------------------------------- queries

    def unigram(self) -> np.ndarray:
        """p(w) at order 1, interpolated with the uniform distribution over the vocabulary
        (computed once: every query and every generation step starts from it)."""
        if self._unigram is None:
            lvl, d = self.levels[0], self.discounts[0]
            adj = lvl.adj.astype(np.float64)
            total = adj.sum()
            disc = d[np.minimum(lvl.adj, 3)]
            gamma = disc[lvl.adj > 0].sum() / total
            self._unigram = np.maximum(adj - disc, 0) / total + gamma / self.vocab_size
        return self._unigram

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
            p = self.unigram().copy()
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


def training_stream(documents: list[np.ndarray], boundary: int) -> np.ndarray:
    """Documents' token ids joined into one stream that starts, ends and is separated by ``boundary``."""
    stream = np.empty(sum(len(d) for d in documents) + len(documents) + 1, dtype=np.int32)
    stream[0] = boundary
    at = 1
    for doc in documents:
        stream[at:at + len(doc)] = doc
        stream[at + len(doc)] = boundary
        at += len(doc) + 1
    return stream


@dataclass
class _Groups:
    """The distinct grams of one order as runs of the depth-sorted suffix array."""

    gid: np.ndarray     # per suffix-array slot: its group
    pos: np.ndarray     # per group: the start of one occurrence in the stream
    size: np.ndarray    # per group: raw count
    valid: np.ndarray   # per group: the gram fits before the stream ends
    parent: np.ndarray | None  # per group: its (k-1)-prefix's group


def _groups(k: int, sa: np.ndarray, lcp: np.ndarray, prev: _Groups | None) -> _Groups:
    starts = lcp < k
    gid = np.cumsum(starts, dtype=np.int32) - 1
    first_slot = np.flatnonzero(starts).astype(np.int32)
    size = np.diff(first_slot, append=np.int32(len(sa)))
    pos = sa[first_slot]
    return _Groups(gid=gid, pos=pos, size=size, valid=pos <= len(sa) - k,
                   parent=prev.gid[first_slot] if prev is not None else None)


def build(stream: np.ndarray, order: int, vocab_size: int, boundary: int) -> NgramModel:
    """Count every gram of ``stream`` up to ``order`` and derive the Kneser–Ney statistics.

    ``stream`` must start and end with ``boundary``, which also separates documents. One sort of the
    stream's positions by their next ``order`` tokens groups equal grams of every order; a gram's
    continuation count is the number of distinct one-longer grams whose suffix it is, found through
    the inverse of that sort."""
    if order < 1:
        raise ValueError("order must be at least 1")
    stream = np.ascontiguousarray(stream, dtype=np.int32)
    n = len(stream)
    if n < 2 or stream[0] != boundary or stream[-1] != boundary:
        raise ValueError("the training stream must start and end with the boundary token")
    sa = _depth_sorted(stream, order, vocab_size)
    lcp = _common_prefix(stream, sa, order, vocab_size)
    rank = np.empty(n, dtype=np.int32)
    rank[sa] = np.arange(n, dtype=np.int32)

    levels, discounts = [], np.zeros((order, 4))
    cur = _groups(1, sa, lcp, None)
    prev_rows = prev_explicit = None
    for k in range(1, order + 1):
        nxt = _groups(k + 1, sa, lcp, cur) if k < order else None
        first = stream[cur.pos]
        adj = np.where(cur.valid, cur.size, 0)
        if nxt is not None:  # lower orders: distinct left neighbours, except after the boundary
            left = nxt.valid
            continuation = np.bincount(cur.gid[rank[nxt.pos[left] + 1]], minlength=len(adj))
            use = cur.valid & (first != boundary)
            adj[use] = continuation[use]
        discounts[k - 1] = modified_kn_discounts(adj[cur.valid])

        if k == 1:  # every vocabulary id has a row, and its row number is the id
            explicit = cur.valid
            rows = np.where(explicit, first, -1)
            raw, a = np.zeros(vocab_size, np.int64), np.zeros(vocab_size, np.int64)
            raw[first[explicit]], a[first[explicit]] = cur.size[explicit], adj[explicit]
            level = Level(raw=_smallest_uint(raw), adj=_smallest_uint(a))
        else:
            explicit = cur.valid & (cur.size >= 2)
            rows = np.where(explicit, np.cumsum(explicit, dtype=np.int32) - 1, -1)
            level = Level(raw=_smallest_uint(cur.size[explicit]), adj=_smallest_uint(adj[explicit]))
            child = cur.valid & prev_explicit[cur.parent]  # grams whose prefix has a row
            parent_rows = prev_rows[cur.parent[child]]
            _history_stats(levels[-1], parent_rows, cur.size[child], adj[child], discounts[k - 1])
            token = stream[cur.pos[child] + k - 1]
            level.child_keys = parent_rows.astype(np.int64) * vocab_size + token
            level.child_refs = np.where(explicit[child], rows[child], -cur.pos[child] - 1).astype(np.int32)
        levels.append(level)
        prev_rows, prev_explicit, cur = rows, explicit, nxt
    return NgramModel(order=order, vocab_size=vocab_size, boundary=boundary, stream=stream,
                      levels=levels, discounts=discounts)


def _padded(stream: np.ndarray, extra: int, pad_id: int) -> np.ndarray:
    pad = np.full(len(stream) + extra, pad_id, dtype=np.int32)  # pad_id sorts after every real id
    pad[:len(stream)] = stream
    return pad


def _depth_sorted(stream: np.ndarray, order: int, vocab_size: int) -> np.ndarray:
    """Stream positions sorted by their next ``order`` tokens (at least), as int32.

    As many tokens as fit are packed into each 63-bit key (4 per key for a 13k-word vocabulary), so
    the sort takes ceil(order / per_key) passes instead of ``order``."""
    bits = int(vocab_size).bit_length()
    per_key = max(1, 63 // bits)
    n_keys = -(-order // per_key)
    n = len(stream)
    pad = _padded(stream, n_keys * per_key, vocab_size)
    keys = []
    for j in range(n_keys):
        key = np.zeros(n, dtype=np.int64)
        for i in range(j * per_key, (j + 1) * per_key):
            key <<= bits
            key |= pad[i:i + n]
        keys.append(key)
    return np.lexsort(keys[::-1]).astype(np.int32)


def _common_prefix(stream: np.ndarray, sa: np.ndarray, order: int, pad_id: int) -> np.ndarray:
    """lcp[i]: tokens shared by the suffixes at sa[i-1] and sa[i], capped at ``order`` (lcp[0] = 0)."""
    pad = _padded(stream, order, pad_id)
    lcp = np.zeros(len(sa), dtype=np.uint8)
    alive = np.ones(len(sa) - 1, dtype=bool)
    for k in range(order):
        a, b = pad[sa[:-1] + k], pad[sa[1:] + k]
        alive &= (a == b) & (a != pad_id)
        lcp[1:] += alive
    return lcp


def _history_stats(parent_level: Level, parent_rows: np.ndarray, size: np.ndarray, adj: np.ndarray,
                   d: np.ndarray) -> None:
    """Per stored (k-1)-gram: total, back-off weight and raw follow count over its k-gram children
    (given as the parent row, raw count and adjusted count of every child of a stored parent)."""
    n_rows = len(parent_level.raw)
    total = np.bincount(parent_rows, weights=adj, minlength=n_rows)
    parent_level.total = total
    parent_level.follow = np.bincount(parent_rows, weights=size, minlength=n_rows)
    mass = np.bincount(parent_rows, weights=d[np.minimum(adj, 3)], minlength=n_rows)
    parent_level.backoff = np.divide(mass, total, out=np.zeros(n_rows), where=total > 0)
