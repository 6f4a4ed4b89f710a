"""llama.cpp's pre-tokenizers rebuilt for transformers (harness.sources.gguf_pretokenizer), checked against llama.cpp
itself on a byte-level BPE vocabulary trained here to merge across every boundary a pre-tokenizer draws
(letters, digits, spaces, newlines, punctuation): any piece cut differently shows in the ids. The GGUFs
hold only the vocabulary, which llama.cpp reads with ``vocab_only``."""

import json
from pathlib import Path

import pytest
from stress_text import stress_text

from harness.sources.gguf_pretokenizer import RULES, UnknownPreTokenizer

pytestmark = [pytest.mark.hf, pytest.mark.gguf]
pytest.importorskip("transformers", reason="needs the hf extra (pip install -e '.[hf]')")
pytest.importorskip("llama_cpp", reason="needs the gguf extra (pip install -e '.[gguf]')")
gguf = pytest.importorskip("gguf", reason="needs the gguf extra (pip install -e '.[gguf]')")

#: a token the merges cannot build: only a rule with ignore_merges takes " zqxj" whole
UNMERGEABLE = "Ġzqxj"
REPRESENTATIVES = {rule.group: name for name, rule in reversed(RULES.items())}


@pytest.fixture(scope="module")
def text(corpora_dir):
    return stress_text() + " zqxj " + (corpora_dir / "wikitext-2-raw" / "wiki.test.raw").read_text()[:100_000]


@pytest.fixture(scope="module")
def vocabulary(text):
    """(tokens, merges) of a 4,000-token byte-level BPE trained on 100-character chunks without any split."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  max_token_length=8, show_progress=False)
    tok.train_from_iterator([text[i:i + 100] for i in range(0, len(text), 100)], trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get) + [UNMERGEABLE]
    return tokens, [" ".join(pair) for pair in model["merges"]]


@pytest.fixture(scope="module")
def write_gguf(vocabulary, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab-gguf")

    def write(pre: str) -> Path:
        tokens, merges = vocabulary
        path = folder / f"{pre}.gguf"
        writer = gguf.GGUFWriter(path, "llama")
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types([1] * len(tokens))
        writer.add_token_merges(merges)
        writer.add_bos_token_id(0)
        writer.add_eos_token_id(0)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path

    return write


def _llama_cpp_ids(path: Path, text: str) -> list[int]:
    from harness.backends.llamacpp.tokenizer import gguf_tokenizer

    return gguf_tokenizer(path).encode(text).tolist()


def test_every_name_is_mapped_as_llama_cpp_maps_it(write_gguf, text):
    """llama.cpp cuts the text of each name in RULES exactly as it does for its group's first name, and
    the groups all cut it differently (so the vocabulary tells them apart)."""
    by_group = {group: _llama_cpp_ids(write_gguf(name), text) for group, name in REPRESENTATIVES.items()}
    assert len({tuple(ids) for ids in by_group.values()}) == len(by_group)
    for name, rule in RULES.items():
        assert _llama_cpp_ids(write_gguf(name), text) == by_group[rule.group], name


@pytest.mark.parametrize("group", sorted(REPRESENTATIVES))
def test_saved_tokenizer_splits_like_llama_cpp(group, write_gguf, text, tmp_path):
    """The tokenizer the hf backend loads (saved, then read back as the backend reads it) gives
    llama.cpp's ids."""
    from transformers import AutoTokenizer

    from harness.backends.hf.tokenizer import HfTokenizer
    from harness.sources.gguf_to_hf import save_tokenizer, tokenizer_record

    path = write_gguf(REPRESENTATIVES[group])
    record = save_tokenizer(path, tmp_path)
    assert record == tokenizer_record(tmp_path)
    assert record["pre"] == REPRESENTATIVES[group] and record["pre_tokenizer"] == f"llama.cpp's {group} regexes"
    ours = HfTokenizer(AutoTokenizer.from_pretrained(tmp_path)).encode(text).tolist()
    assert ours == _llama_cpp_ids(path, text)


def test_transformers_alone_splits_smollm_otherwise(write_gguf, text):
    """The bug this module fixes: transformers' GGUF loader splits smollm's text GPT-2's way."""
    from transformers import AutoTokenizer

    path = write_gguf("smollm")
    plain = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert plain(text, add_special_tokens=False).input_ids != _llama_cpp_ids(path, text)


def test_unknown_pre_tokenizer_is_refused_in_one_line(write_gguf, tmp_path):
    from harness.sources.gguf_to_hf import ensure_materialized, materialized_dir, save_tokenizer

    path = write_gguf("no-such-rule")
    with pytest.raises(UnknownPreTokenizer, match="tokenizer.ggml.pre is 'no-such-rule'"):
        save_tokenizer(path, tmp_path)
    # through the conversion process, as the hf backend meets it: the reason names the key, nothing is cached
    with pytest.raises(RuntimeError, match=r"failed \(exit code 1\): .*tokenizer.ggml.pre is 'no-such-rule'"):
        ensure_materialized(path, "0" * 64)
    folder = materialized_dir("0" * 64).parent  # shared with the session's other conversions
    assert [p.name for p in folder.iterdir() if "0" * 32 in p.name and not p.name.endswith(".lock")] == []


def test_a_tokenizers_pre_tokenizer_is_named_by_the_llama_cpp_rule_that_cuts_alike():
    """Converting a Hugging Face tokenizer to GGUF names its pre-tokenizer by the llama.cpp rule that cuts a probe
    text into the same pieces (and has the same ignore_merges); a split no rule makes is refused (None)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    from harness.sources.gguf_pretokenizer import LLAMA3, QWEN2, identify_pre_tokenizer

    def named(pre, ignore_merges=False):
        tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
        tokenizer.pre_tokenizer = pre
        return identify_pre_tokenizer(tokenizer)

    bytes_only = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)

    def split(regex):
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), "isolated"), bytes_only])

    assert named(pre_tokenizers.ByteLevel(add_prefix_space=False)) == "gpt-2"
    assert named(pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                          pre_tokenizers.ByteLevel(add_prefix_space=False)])) == "starcoder"
    assert named(split(LLAMA3), ignore_merges=True) == "llama-bpe"
    assert named(split(LLAMA3)) == "dbrx"
    assert named(split(QWEN2)) == "qwen2"
    assert named(pre_tokenizers.ByteLevel(add_prefix_space=True)) is None
    assert named(pre_tokenizers.Whitespace()) is None
    assert named(None) is None
