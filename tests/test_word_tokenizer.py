"""Word tokens: rare words become <unk>, lower-casing is optional, and the tokens' bytes cover the text."""

import numpy as np
import pytest

from harness.backends.ngram.tokenizer import WordTokenizer

pytestmark = pytest.mark.ngram


def test_vocabulary_by_frequency_with_unknown_words():
    tok, (encoded,) = WordTokenizer.train(["the cat, the dog. The end"], lowercase=True, min_count=2)
    assert tok.words == ["<s>", "<unk>", "the"]
    assert tok.encode("The cat!").tolist() == [2, 1, 1]
    assert encoded.tolist() == tok.encode("the cat, the dog. The end").tolist() == [2, 1, 1, 2, 1, 1, 2, 1]


def test_case_kept_unless_asked():
    tok, _ = WordTokenizer.train(["The the"], lowercase=False, min_count=1)
    assert tok.encode("The the THE").tolist() == [tok.index["The"], tok.index["the"], tok.unk_id]


def test_byte_counts_cover_every_byte_of_the_text():
    text = "  Émile said: “naïve” café — 3 €\n\nend.  "
    tok, _ = WordTokenizer.train([text], lowercase=False, min_count=1)
    ids = tok.encode(text)
    counts = tok.byte_counts(text, ids)
    assert len(counts) == len(ids)
    assert counts.sum() == len(text.rstrip().encode("utf-8"))  # trailing whitespace belongs to no token
    assert counts[0] == len("  Émile".encode())
    assert counts[1] == len(b" said")


def test_long_texts_are_read_in_slices_without_splitting_words(monkeypatch):
    import harness.backends.ngram.tokenizer as wt

    monkeypatch.setattr(wt, "_SLICE", 7)
    text = "alpha beta,gamma   delta\nepsilon zeta-eta " * 3
    tok, (encoded,) = WordTokenizer.train([text], lowercase=False, min_count=1)
    assert [tok.words[i] for i in encoded] == wt.WORD.findall(text)


def test_byte_counts_of_a_prefix():
    text = "one two three four"
    tok, _ = WordTokenizer.train([text], lowercase=False, min_count=1)
    ids = tok.encode(text)[:2]
    np.testing.assert_array_equal(tok.byte_counts(text, ids), [3, 4])
