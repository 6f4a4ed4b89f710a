"""An independent, dictionary-based interpolated modified Kneser–Ney, written straight from Chen &
Goodman's equations, to check the array implementation against on small streams (never fast)."""

from __future__ import annotations

from collections import Counter, defaultdict


def ngrams(stream, k):
    return [tuple(stream[i:i + k]) for i in range(len(stream) - k + 1)]


class ReferenceKN:
    def __init__(self, stream, order, vocab_size, boundary):
        self.order, self.V, self.B = order, vocab_size, boundary
        self.adj = {}
        for k in range(1, order + 1):
            raw = Counter(ngrams(stream, k))
            if k == order:
                self.adj[k] = dict(raw)
            else:
                left = defaultdict(set)
                for g in ngrams(stream, k + 1):
                    left[g[1:]].add(g[0])
                self.adj[k] = {g: (c if g[0] == boundary else len(left[g])) for g, c in raw.items()}
        self.D = {k: self.discounts(list(self.adj[k].values())) for k in self.adj}

    @staticmethod
    def discounts(counts):
        """Chen & Goodman's three discounts; where counts of counts are missing or a discount leaves
        (0, r], Ney's single discount n1 / (n1 + 2 n2) (the harness's documented fallback)."""
        n = [sum(1 for c in counts if c == r) for r in (1, 2, 3, 4)]
        ney = n[0] / (n[0] + 2 * n[1]) if n[0] else 0.5
        if not all(n):
            return {r: ney for r in (1, 2, 3)}
        out = {r: r - (r + 1) * ney * n[r] / n[r - 1] for r in (1, 2, 3)}
        return {r: d if 0 < d <= r else ney for r, d in out.items()}

    def d(self, k, c):
        return 0.0 if c == 0 else self.D[k][min(c, 3)]

    def prob(self, word, history):
        history = tuple(history)[max(0, len(history) - self.order + 1):] if self.order > 1 else ()
        return self._p(word, history)

    def _p(self, word, history):
        k = len(history) + 1
        if k == 1:
            adj = self.adj[1]
            total = sum(adj.values())
            gamma = sum(self.d(1, c) for c in adj.values()) / total
            c = adj.get((word,), 0)
            return max(c - self.d(1, c), 0) / total + gamma / self.V
        lower = self._p(word, history[1:])
        children = {g: c for g, c in self.adj[k].items() if g[:-1] == history}
        total = sum(children.values())
        if total == 0:
            return lower
        gamma = sum(self.d(k, c) for c in children.values()) / total
        c = self.adj[k].get(history + (word,), 0)
        return max(c - self.d(k, c), 0) / total + gamma * lower
