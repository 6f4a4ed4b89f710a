"""Corpus sources and fingerprints. The hub path is exercised on a local copy laid out like the hub repo."""

import hashlib

import pandas as pd
import pytest

from harness.core.errors import UserError
from harness.sources.corpora import DatasetSpec, load_corpus, stdlib_docs

WIKI_SHA = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"


def test_builtin_split_is_deterministic_and_disjoint():
    train, test = stdlib_docs("train"), stdlib_docs("test")
    assert stdlib_docs("test") == test
    assert len(train) > 3 * len(test) > 50_000
    from pydoc_data.topics import topics

    for text in topics.values():  # every topic lands in exactly one split
        assert (text.strip() in train) != (text.strip() in test)


def test_corpora_source_is_byte_exact_and_fingerprinted(corpora_dir, tmp_path):
    corpus = load_corpus("w", DatasetSpec(source="corpora:wikitext-2-raw/wiki.test.raw"), tmp_path, corpora_dir)
    assert corpus.sha256 == WIKI_SHA
    assert corpus.text.startswith(" \n = Robert Boulter = \n")
    assert corpus.n_bytes == 1_290_590


def test_file_source_relative_to_suite_and_no_newline_translation(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"line one\r\nline two\n")
    corpus = load_corpus("t", DatasetSpec(source="file:t.txt"), tmp_path)
    assert corpus.text == "line one\r\nline two\n"
    assert corpus.sha256 == hashlib.sha256(b"line one\r\nline two\n").hexdigest()


def test_known_corpus_with_wrong_contents_is_refused(tmp_path):
    fake = tmp_path / "wikitext-2-raw"
    fake.mkdir()
    (fake / "wiki.test.raw").write_text("not wikitext")
    with pytest.raises(UserError, match="expected the published 173c87a53759"):
        load_corpus("w", DatasetSpec(source="corpora:wikitext-2-raw/wiki.test.raw"), tmp_path, tmp_path)


def test_non_utf8_file_is_refused(tmp_path):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match="is not UTF-8 text"):
        load_corpus("t", DatasetSpec(source="file:latin1.txt"), tmp_path)


def test_hf_datasets_source_on_a_local_copy_of_the_hub_layout(corpora_dir, tmp_path):
    """Salesforce/wikitext as the hub lays it out (a parquet per config and split, configs declared in
    the README), built from the local file: loading it through `hf:` must give the raw file back."""
    pytest.importorskip("datasets")
    raw = (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_bytes().decode()
    repo = tmp_path / "wikitext"
    (repo / "wikitext-2-raw-v1").mkdir(parents=True)
    pd.DataFrame({"text": raw.splitlines(keepends=True)}).to_parquet(
        repo / "wikitext-2-raw-v1" / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-2-raw-v1\n  data_files:\n"
        "  - split: test\n    path: wikitext-2-raw-v1/test-*\n---\n")
    corpus = load_corpus("w", DatasetSpec(source=f"hf:{repo}/wikitext-2-raw-v1#test"), tmp_path)
    assert corpus.sha256 == WIKI_SHA
    with pytest.raises(UserError, match="cannot load hf:"):
        load_corpus("w", DatasetSpec(source=f"hf:{repo}/wikitext-2-raw-v1#validation"), tmp_path)
