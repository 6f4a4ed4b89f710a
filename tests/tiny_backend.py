"""A tiny language model built in code for unit tests of tasks: a unigram model over characters
(and longer pieces).

Its probabilities are fixed, so every perplexity figure can be computed by hand.
"""

from __future__ import annotations

import math

import numpy as np

from harness.backends.base import Backend, BackendSettings
from harness.core.capabilities import GENERATE, LOGITS, SCORE
from harness.core.decoding import Generation
from harness.core.tokenizer import Tokenizer
from harness.core.types import LoadInfo


class CharTokenizer(Tokenizer):
    """Pieces (characters, or longer strings) matched greedily, longest first; ``merge=False`` splits
    into characters only: the same vocabulary tokenizing a text another way."""

    def __init__(self, pieces: list[str], bos: bool, merge: bool = True):
        self.pieces = pieces
        self.merge = merge
        self.bos_id = len(pieces) if bos else None
        self.eos_id = len(pieces) + 1
        self.add_bos = bos
        self.vocab_size = len(pieces) + 2

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            piece = max((p for p in self.pieces if text.startswith(p, i) and (self.merge or len(p) == 1)), key=len)
            ids.append(self.pieces.index(piece))
            i += len(piece)
        return np.array(ids, dtype=np.int32)

    def token_bytes(self, token_id):
        return self.pieces[token_id].encode() if token_id < len(self.pieces) else b""


class UnigramBackend(Backend):
    type_name = "tiny-unigram"
    settings_class = BackendSettings
    capabilities = frozenset({SCORE, LOGITS, GENERATE})
    model_kinds = frozenset()

    def __init__(self, probs: dict[str, float], bos: bool = False, merge: bool = True):
        self.probs = probs
        self.tokenizer = CharTokenizer(list(probs), bos, merge)
        self.logp = np.log(np.array(list(probs.values())))
        self.calls = []
        self.prompts = []
        self.prefill_per_token, self.first_s, self.step_s, self.reports_prefill = 0.001, 0.02, 0.05, True

    def load(self, context_tokens):
        return LoadInfo(load_s=0.0, model_bytes=0)

    def score(self, windows):
        self.calls.append(len(windows))
        return [self.logp[w.targets] for w in windows]

    def logprobs(self, windows):
        """The same distribution at every position (BOS and EOS get none of it)."""
        full = np.full(self.tokenizer.vocab_size, -np.inf)
        full[:len(self.logp)] = self.logp
        for i, w in enumerate(windows):
            yield i, w.scored_positions, np.tile(full, (len(w.scored_positions), 1))

    def generate_native(self, prompt_ids, decoding, max_new_tokens, *, ignore_eos, batch_size, trace, on_token):
        """Greedy unigram text on a scripted clock: the prompt costs ``prefill_per_token`` per token,
        each new token ``step_s`` after the previous one, so every timing figure is known by hand."""
        self.prompts.append(np.asarray(prompt_ids).tolist())
        prefill = self.prefill_per_token * len(prompt_ids)
        best = int(np.argmax(self.logp))
        times = [prefill + self.first_s + i * self.step_s for i in range(max_new_tokens)]
        return Generation(tokens=[best] * max_new_tokens, times=times,
                          prefill_s=prefill if self.reports_prefill else None)

    def close(self):
        pass


def nll(probs, text):
    return [-math.log(probs[c]) for c in text]
