"""The perplexity task's arithmetic, checked by hand on a unigram model whose probabilities are fixed."""

import math

import numpy as np
import pytest
from tiny_backend import UnigramBackend, nll

from harness.sources.corpora import Corpus
from harness.tasks.perplexity import PerplexitySettings, PerplexityTask

PROBS = {"a": 0.5, "b": 0.25, " ": 0.125, "c": 0.125}


def run(text, **settings):
    backend = UnigramBackend(PROBS)
    task = PerplexityTask(PerplexitySettings(type="perplexity", dataset="d", **settings))
    result = task.run(backend, Corpus("d", "test", text, "0"))
    return {m.metric: m for m in result.measurements}, result


def test_chunked_scores_second_half_of_each_chunk():
    text = "abca bcab" + "cc a bbaa a"  # 20 chars, n_ctx 8 -> 2 chunks, 4 left over
    metrics, result = run(text, window="chunked", n_ctx=8)
    # positions 4..6 of each chunk predict chunk[5..7]
    scored = text[5:8] + text[13:16]
    expected = nll(PROBS, scored)
    assert metrics["tokens_scored"].value == 6
    assert metrics["token_ppl"].value == pytest.approx(math.exp(sum(expected) / 6), rel=1e-12)
    assert metrics["bits_per_byte"].value == pytest.approx(sum(expected) / (math.log(2) * 6), rel=1e-12)
    assert metrics["bytes_scored"].value == 6
    # llama-perplexity's σ: ppl * sqrt((E[x²] - E[x]²) / (N - 1))
    x = np.array(expected)
    sigma = math.exp(x.mean()) * math.sqrt((np.mean(x**2) - x.mean() ** 2) / 5)
    assert metrics["token_ppl"].stderr == pytest.approx(sigma, rel=1e-9)
    assert "word_ppl" not in metrics and "unk_tokens" not in metrics  # an open vocabulary: nothing unknown
    assert result.samples["window_tokens"] == [3, 3]
    assert result.resolved["add_bos"] is False


def test_rolling_scores_every_token_once_and_reports_word_ppl():
    text = "ab a ba cab  a"
    metrics, _ = run(text, window="rolling", n_ctx=4)
    total = sum(nll(PROBS, text))
    assert metrics["tokens_scored"].value == len(text)
    assert metrics["token_ppl"].value == pytest.approx(math.exp(total / len(text)), rel=1e-12)
    assert metrics["word_ppl"].value == pytest.approx(math.exp(total / 5), rel=1e-12)  # 5 words
    assert metrics["word_ppl"].n == 5


def test_word_ppl_counts_words_as_lm_eval_does():
    """lm-eval's len(re.split(r"\\s+", doc)) counts an empty word at leading and at trailing whitespace:
    7 words here where str.split() sees 5."""
    text = "  ab a ba cab  a "
    total = sum(nll(PROBS, text))
    metrics, result = run(text, window="rolling", n_ctx=4)
    assert metrics["word_ppl"].n == 7 and result.resolved["word_count"] == "lm-eval"
    assert metrics["word_ppl"].value == pytest.approx(math.exp(total / 7), rel=1e-12)
    metrics, result = run(text, window="rolling", n_ctx=4, word_count="whitespace")
    assert metrics["word_ppl"].n == 5 and result.resolved["word_count"] == "whitespace"
    assert metrics["word_ppl"].value == pytest.approx(math.exp(total / 5), rel=1e-12)
    _, chunked = run(text, window="chunked", n_ctx=4)
    assert "word_count" not in chunked.resolved  # no word_ppl, no convention


def test_an_unset_word_count_leaves_the_perplexity_cell_id_as_it_was():
    """The settings enter the cell id as dumped: unset, word_count must not appear."""
    assert PerplexitySettings(type="perplexity", dataset="d", window="rolling").model_dump(mode="json") == {
        "type": "perplexity", "dataset": "d", "window": "rolling", "n_ctx": 512, "stride": None,
        "max_tokens": None, "add_bos": None}
    assert PerplexitySettings(type="perplexity", dataset="d", window="rolling", word_count="lm-eval").model_dump(
        mode="json")["word_count"] == "lm-eval"


def test_sliding_never_scores_the_first_token():
    text = "abcab cabca"
    metrics, _ = run(text, window="sliding", n_ctx=4, stride=2)
    assert metrics["tokens_scored"].value == len(text) - 1
    assert metrics["nll_mean"].value == pytest.approx(np.mean(nll(PROBS, text[1:])), rel=1e-12)


def test_max_tokens_truncates_before_windowing():
    metrics, result = run("ab" * 100, window="rolling", n_ctx=16, max_tokens=40)
    assert metrics["tokens_scored"].value == 40
    assert result.resolved["text_tokens"] == 40


def test_bootstrap_ci_brackets_the_estimate():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list(PROBS), p=list(PROBS.values()), size=4000))
    metrics, _ = run(text, window="chunked", n_ctx=64)
    ppl = metrics["token_ppl"]
    assert ppl.ci_low < ppl.value < ppl.ci_high
    # entropy of PROBS is 1.75 bits: the sampled text's bits/byte must be close to it
    assert metrics["bits_per_byte"].value == pytest.approx(1.75, abs=0.05)


def test_text_shorter_than_a_chunk_is_an_error():
    with pytest.raises(ValueError, match="fewer than one chunked window"):
        run("abc", window="chunked", n_ctx=8)


def test_stride_only_for_sliding_and_word_count_only_for_rolling():
    with pytest.raises(ValueError, match="stride applies only"):
        PerplexitySettings(type="perplexity", dataset="d", window="rolling", stride=3)
    with pytest.raises(ValueError, match="word_count applies only to window: rolling"):
        PerplexitySettings(type="perplexity", dataset="d", word_count="whitespace")


def test_tokenization_counts_tokens_per_byte_and_word():
    from harness.sources.corpora import Corpus
    from harness.tasks.tokenization import TokenizationSettings, TokenizationTask

    backend = UnigramBackend(PROBS)
    text = "ab ba ab c"  # 10 characters, 4 words, one token per character
    task = TokenizationTask(TokenizationSettings(type="tokenization", dataset="d"))
    result = task.run(backend, Corpus(name="d", source="d", text=text, sha256=""))
    m = {x.metric: x.value for x in result.measurements}
    assert m["tokens_per_byte"] == 1.0 and m["tokens_per_word"] == 10 / 4
    assert result.resolved["distinct_tokens"] == 4
    short = TokenizationTask(TokenizationSettings(type="tokenization", dataset="d", max_bytes=5))
    assert {x.metric: x.value for x in short.run(backend, Corpus("d", "d", text, "")).measurements}[
        "tokens_per_word"] == 5 / 2


def test_tokenization_against_a_reference_counts_the_tokens_it_does_not_share():
    """The same vocabulary split two ways: greedy longest pieces against characters only. "ab ab" is
    [ab][ ][ab] against [a][b][ ][a][b]: the two "ab" tokens are not in the reference's split."""
    from harness.tasks.tokenization import TokenizationSettings, TokenizationTask

    probs = {"a": 0.25, "b": 0.25, " ": 0.25, "ab": 0.25}
    settings = TokenizationSettings(type="tokenization", dataset="d", reference={"model": "m", "backend": "chars"})

    def differing(candidate, reference, text):
        result = TokenizationTask(settings, reference).run(candidate, Corpus("d", "d", text, ""))
        return {m.metric: m.value for m in result.measurements}["differing_tokens"], result.resolved

    merged, chars = UnigramBackend(probs), UnigramBackend(probs, merge=False)
    count, resolved = differing(merged, chars, "ab ab")
    assert count == 2 and resolved["tokens"] == 3 and resolved["reference_tokens"] == 5
    assert differing(chars, merged, "ab ab")[0] == 4  # its a and b, twice
    assert differing(merged, UnigramBackend(probs), "ab ba ab")[0] == 0
    assert differing(chars, UnigramBackend(probs, merge=False), "ba a")[0] == 0
    with pytest.raises(ValueError, match="vocabulary has 4 tokens, this backend's 6"):
        differing(merged, UnigramBackend({"a": 0.5, "b": 0.5}), "ab")


def test_an_unset_reference_leaves_the_tokenization_cell_id_as_it_was():
    from harness.tasks.tokenization import TokenizationSettings

    plain = TokenizationSettings(type="tokenization", dataset="d")
    assert plain.model_dump(mode="json") == {"type": "tokenization", "dataset": "d", "max_bytes": None}
    with_reference = TokenizationSettings(type="tokenization", dataset="d", reference={"model": "m", "backend": "b"})
    assert with_reference.model_dump(mode="json")["reference"] == {"model": "m", "backend": "b"}
