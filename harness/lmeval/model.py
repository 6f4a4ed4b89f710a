"""lm-evaluation-harness's ``LM`` API on any harness backend: one adapter, so no backend holds lm-eval code.

lm-eval hands a model text requests; this class turns them into the harness's :class:`Window` records with
the tokenization rules of lm-eval's own ``HFLM`` (lm_eval/models/huggingface.py), so that a number measured
through a harness backend is the number lm-eval's ``hf`` model gives on the same weights:

- ``loglikelihood``: :class:`TemplateLM`'s own rules (inherited, not copied): trailing whitespace of the
  context moves to the continuation, ``encode(context + continuation)`` is split at ``len(encode(context))``,
  an empty context becomes the prefix token (BOS, else EOS). The input is ``(context + continuation)`` cut
  to its last ``max_length + 1`` tokens minus the last one; the continuation's tokens are the scored labels.
  Log-likelihood and is-greedy come from the backend's full-vocabulary rows (capability ``logits``).
- ``loglikelihood_rolling``: :func:`harness.core.windows.rolling`, lm-eval's disjoint rolling windows.
- ``generate_until``: the backend's own generation, greedy unless the request samples, cut at the first stop
  sequence (the request's ``until`` and the EOS text).

Requests are ordered longest first, as lm-eval's models order them, sent to the backend ``batch_size`` at a
time, and the results are returned in the order asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from harness.backends.base import Backend
from harness.core.capabilities import lmeval_missing
from harness.core.decoding import Decoding
from harness.core.errors import Unavailable
from harness.core.types import Window
from harness.core.windows import rolling
from harness.lmeval.model_args import load_backend, split_model_args

#: what lm-eval's models default to when the model names no context length
DEFAULT_MAX_LENGTH = 2048
#: requests sent to the backend per call when lm-eval does not say (its ``batch_size`` is then ``auto``)
DEFAULT_BATCH = 64
def continuation_window(context: Sequence[int], continuation: Sequence[int], max_length: int) -> Window:
    """The window lm-eval's ``HFLM`` feeds for one (context, continuation) pair: both joined, cut from the
    left to ``max_length + 1`` tokens, the last dropped; the continuation's tokens are the last labels."""
    if not context or not continuation:
        raise ValueError("lm-eval pairs have a non-empty context and continuation")
    if len(continuation) > max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens exceeds max_length {max_length}")
    whole = (list(context) + list(continuation))[-(max_length + 1):]
    inputs = whole[:-1]
    labels = np.full(len(inputs), -1, dtype=np.int32)
    labels[len(inputs) - len(continuation):] = continuation
    return Window(np.asarray(inputs, dtype=np.int32), labels)


def longest_first(lengths: Sequence[int], keys: Sequence[tuple] | None = None) -> list[int]:
    """Request indices in lm-eval's order: longest first (ties by the tokens themselves, as its ``Collator``
    sorts them), so a batch's first request is its longest and memory runs out at once if at all."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], keys[i] if keys else ()))


def in_batches(order: list[int], size: int, run: Callable[[list[int]], list]) -> list:
    """``run`` over ``order`` in slices of ``size``; the results put back in the original order."""
    out: list = [None] * len(order)
    for start in range(0, len(order), size):
        part = order[start:start + size]
        for index, value in zip(part, run(part), strict=True):
            out[index] = value
    return out


@register_model("harness")
class HarnessLM(TemplateLM):
    """A loaded harness backend seen by lm-eval as a model. From lm-eval, ``model_args`` name the backend
    type, its settings and the model source (:mod:`harness.lmeval.model_args`); from a suite, the task
    hands over its ``loaded`` backend."""

    def __init__(self, loaded: Backend | None = None, max_length: int | None = None,
                 batch_size: int | str | None = None, add_bos_token: bool | None = None,
                 prefix_token_id: int | None = None, **model_args):
        super().__init__()
        self.max_length = int(max_length or DEFAULT_MAX_LENGTH)
        if loaded is None:  # model_args: backend=TYPE, its settings, the model source
            loaded = load_backend(*split_model_args(model_args), self.max_length)
        elif model_args:
            raise TypeError(f"unexpected arguments with a loaded backend: {', '.join(sorted(model_args))}")
        #: not ``self.backend``: lm-eval's TemplateLM reads that as "causal" or "seq2seq"
        self.harness_backend = loaded
        self.tok = loaded.tokenizer
        self.batch_size = int(batch_size) if str(batch_size or "auto").isdigit() else DEFAULT_BATCH
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> HarnessLM:
        from lm_eval.utils import simple_parse_args_string

        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        return cls(**simple_parse_args_string(arg_string), **extra)

    # --- tokens -------------------------------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def tokenizer_name(self) -> str:
        return f"harness-{self.harness_backend.type_name}-{Path(str(self.harness_backend.model.path)).name}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """``HFLM.tok_encode``: BOS as the tokenizer adds it (or as ``add_bos_token`` says), none when the
        string already starts with the prefix token's text; special-token markup parsed as those tokens."""
        add = add_special_tokens if add_special_tokens is not None else self.add_bos_token
        if add is None:
            add = self.tok.add_bos
        prefix_text = self.tok.special_text(self.prefix_token_id)
        if add_special_tokens is None and prefix_text and string.startswith(prefix_text):
            add = False
        try:
            ids = self.tok.encode_special(string)
        except NotImplementedError:  # a tokenizer without special-token markup (the n-gram's words)
            ids = self.tok.encode(string)
        ids = [int(t) for t in ids]
        if add and self.tok.bos_id is not None:
            ids = [self.tok.bos_id] + ids
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tok.text(tokens)

    # --- requests -----------------------------------------------------------------------------------------

    def _require(self, output_type: str) -> None:
        why = lmeval_missing(self.harness_backend.type_name, self.harness_backend.capabilities, output_type)
        if why:
            raise Unavailable(why)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log-likelihood, is-greedy) of each ``(strings, context ids, continuation ids)`` request."""
        self._require("loglikelihood")
        windows = [continuation_window(ctx, cont, self.max_length) for _, ctx, cont in requests]
        whole = [tuple(ctx) + tuple(cont) for _, ctx, cont in requests]
        order = longest_first([len(w) for w in whole], whole)
        answers = in_batches(order, self.batch_size, lambda part: self._greedy_scores([windows[i] for i in part]))
        for (strings, _, _), answer in zip(requests, answers, strict=True):
            if strings is not None:  # rolling windows come without strings
                self.cache_hook.add_partial("loglikelihood", strings, answer)
        return answers

    def _greedy_scores(self, windows: list[Window]) -> list[tuple[float, bool]]:
        """Sum of the targets' log-probabilities and whether each target is the row's argmax."""
        total = [0.0] * len(windows)
        greedy = [True] * len(windows)
        for index, positions, rows in self.harness_backend.logprobs(windows):
            targets = windows[index].labels[positions]
            rows = np.asarray(rows)
            total[index] += float(rows[np.arange(len(targets)), targets].astype(np.float64).sum())
            greedy[index] &= bool((rows.argmax(axis=1) == targets).all())
        return list(zip(total, greedy, strict=True))

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Each string's whole log-likelihood over lm-eval's disjoint rolling windows of ``max_length``."""
        self._require("loglikelihood_rolling")
        per_request = [rolling(np.asarray(self.tok_encode(string), dtype=np.int32), self.max_length,
                               self.prefix_token_id) for (string,) in (r.args for r in requests)]
        flat = [(i, w) for i, wins in enumerate(per_request) for w in wins]
        score = self.harness_backend.score
        sums = in_batches(list(range(len(flat))), self.batch_size,
                          lambda part: [float(lp.sum()) for lp in score([flat[i][1] for i in part])])
        totals = [0.0] * len(requests)
        for (i, _), value in zip(flat, sums, strict=True):
            totals[i] += value
        for request, value in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, value)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """The backend's own generation from each context (left-truncated to leave room for the new tokens),
        cut at the first stop sequence; greedy unless the request asks to sample."""
        self._require("generate_until")
        contexts = [self.tok_encode(context) for context, _ in (r.args for r in requests)]
        order = longest_first([len(c) for c in contexts], [tuple(c) for c in contexts])
        eos = self.tok.special_text(self.eot_token_id) or None

        def run(part: list[int]) -> list[str]:
            return [self._generate(contexts[i], requests[i].args[1], eos) for i in part]

        return in_batches(order, 1, run)

    def _generate(self, context: list[int], gen_kwargs: dict, eos: str | None) -> str:
        kwargs = normalize_gen_kwargs(gen_kwargs, 256)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_new = int(kwargs.pop("max_gen_toks"))
        if max_new >= self.max_length:
            raise ValueError(f"max_gen_toks {max_new} must be less than max_length {self.max_length}")
        decoding = Decoding(temperature=float(kwargs.get("temperature") or 0.0) if kwargs.get("do_sample") else 0.0,
                            top_p=kwargs.get("top_p") or None, top_k=kwargs.get("top_k") or None)  # 0: off
        prompt = np.asarray(context[-(self.max_length - max_new):], dtype=np.int32)
        generation = self.harness_backend.generate(prompt, decoding, max_new, trace=False)
        return postprocess_generated_text(self.tok.text(generation.tokens), until, None)
