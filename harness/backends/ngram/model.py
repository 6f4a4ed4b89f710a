"""A count-based n-gram language model held in numpy arrays: interpolated modified Kneser–Ney, or
stupid back-off for generation.

Why it is small: the training stream is sorted once by its first ``order`` tokens (a depth-limited
suffix array), which groups equal grams of every order at once. A gram seen only once is never stored:
all its counts are 1 and its only continuation is the next token of the training text, so a pointer
into the text (its start position) stands for it. Only grams seen at least twice get a row, and the
children of every such row sit in one sorted table per order, keyed by ``parent_row * vocab + token``.
On four Austen novels at order 8 that is under a million rows instead of 3.3 million grams.
The build works a block of grams at a time, so that besides the model it holds little more than
the sort itself (5 bytes per training token).

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

ABSENT = np.iinfo(np.int64).min
#: stupid back-off's fixed weight (Brants et al., 2007)
STUPID_BACKOFF_ALPHA = 0.4


@dataclass
class Level:
    """Rows of one order: grams seen at least twice (order 1: every vocabulary id)."""

    raw: np.ndarray            # raw count of each row
    adj: np.ndarray            # Kneser–Ney adjusted count of each row
    # as a history of the next order (absent on the highest order):
    total: np.ndarray | None = None    # Σ adjusted counts of its children (an integer)
    backoff: np.ndarray | None = None  # γ: discounted mass handed to the lower order, / total
    follow: np.ndarray | None = None   # Σ raw counts of its children (stupid back-off's denominator, an integer)
    # children of the previous order's rows, sorted (absent on order 1):
    child_keys: np.ndarray | None = None  # parent_row * vocab + token (int32 where that fits)
    child_refs: np.ndarray | None = None  # the child's state


@dataclass
class NgramModel:
    order: int
    vocab_size: int
    boundary: int
    stream: np.ndarray                     # the training tokens, documents separated by ``boundary``
                                           # (the smallest unsigned type: see build.token_dtype)
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
            # below len(rows of order k-1) * vocab_size, so they fit the keys' type: no copy of the table
            keys = (prev[stored] * self.vocab_size + tokens[stored]).astype(lvl.child_keys.dtype)
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
            bounds = np.array([hist * self.vocab_size, (hist + 1) * self.vocab_size], dtype=keys.dtype)
            lo, hi = np.searchsorted(keys, bounds)
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
        """Written in place: the backend saves into a cache entry's temp path, published whole."""
        arrays = {"stream": self.stream, "discounts": self.discounts}
        for k, lvl in enumerate(self.levels, start=1):
            arrays.update({f"{name}_{k}": a for name, a in vars(lvl).items() if a is not None})
        meta = {**self.meta, "order": self.order, "vocab_size": self.vocab_size, "boundary": self.boundary}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

        with open(path, "wb") as fh:  # np.savez adds no .npz to an open file's name
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> NgramModel:
        with np.load(path) as data:
            meta = json.loads(data["meta"].tobytes())
            order = meta.pop("order")
            levels = [Level(**{name: data[f"{name}_{k}"] for name in Level.__dataclass_fields__
                               if f"{name}_{k}" in data}) for k in range(1, order + 1)]
            return cls(order=order, vocab_size=meta.pop("vocab_size"), boundary=meta.pop("boundary"),
                       stream=data["stream"], levels=levels, discounts=data["discounts"], meta=meta)
