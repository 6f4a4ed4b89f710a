"""llama.cpp's pre-tokenizers for the Hugging Face tokenizer made from a GGUF, so both backends cut a text
into the same tokens.

A byte-level BPE vocabulary first cuts the text into pieces (words, digits, runs of spaces) and merges
only inside a piece. A GGUF names that rule (``tokenizer.ggml.pre``) and llama.cpp maps the name to a
list of regexes (``llm_tokenizer_bpe`` in src/llama-vocab.cpp): each regex cuts every piece the ones
before it left, into its matches and the text between them. transformers' GGUF loader knows only some
names and falls back to GPT-2's single regex for the rest: for SmolLM2's ``smollm``, which isolates
every digit first, it gave ``ĊĊĠ Ġ 0`` for "\\n\\n  0" (llama.cpp ``ĊĊĠĠ 0``) and split " ½" apart.

:data:`RULES` copies llama.cpp's regexes (of the llama-cpp-python pinned in pyproject.toml) for the
names whose token ids depend on nothing but the regexes and the ``ignore_merges`` flag; each group is
checked against llama.cpp on a vocabulary trained to merge across every kind of boundary
(tests/test_gguf_pretokenizer.py). A byte-level GGUF naming another rule is refused, not approximated.
SentencePiece vocabularies (``tokenizer.ggml.model = llama``, gemma's) have no pre-tokenizer in
llama.cpp; transformers' own conversion is kept for them and for the other vocabulary types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.core.errors import require

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
LLAMA3 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2 = _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


@dataclass(frozen=True)
class Rule:
    """llama.cpp's pre-tokenizer type: its regexes, applied in turn, and whether a piece that is a token
    of its own is taken whole before any merge (``ignore_merges``, llama 3's tokenizer.json flag)."""

    group: str
    regexes: tuple[str, ...]
    ignore_merges: bool = False


_GPT2 = Rule("gpt2", (GPT2,))
_STARCODER = Rule("starcoder", (r"\p{N}", GPT2))  # every digit its own piece, then GPT-2's split
_QWEN2 = Rule("qwen2", (QWEN2,))
_LLAMA3 = Rule("llama3", (LLAMA3,), ignore_merges=True)
_DBRX = Rule("dbrx", (LLAMA3,))
_DEFAULT = Rule("default", (r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"))

#: ``tokenizer.ggml.pre`` -> rule, as llama.cpp's ``llama_vocab::impl::load`` maps the names
RULES: dict[str, Rule] = {
    "default": _DEFAULT,
    **dict.fromkeys(("gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                     "mellum", "modern-bert", "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling"), _GPT2),
    **dict.fromkeys(("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b",
                     "mellum2"), _STARCODER),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan",
                     "solar-open"), _QWEN2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
                     "jina-v5-nano"), _LLAMA3),
    **dict.fromkeys(("dbrx", "smaug-bpe"), _DBRX),
}


class UnknownPreTokenizer(ValueError):
    """A byte-level GGUF whose pre-tokenizer has no rule here: transformers would split its text otherwise."""


def gguf_tokenizer_names(path: Path) -> tuple[str, str]:
    """``tokenizer.ggml.model`` and ``tokenizer.ggml.pre`` of a GGUF; llama.cpp reads a missing pre as
    ``default``."""
    gguf = require("gguf", "hf", "reading a GGUF's tokenizer")
    fields = gguf.GGUFReader(path).fields

    def string(key: str) -> str | None:
        field = fields.get(key)
        return None if field is None else bytes(field.parts[field.data[0]]).decode("utf-8")

    return string("tokenizer.ggml.model") or "", string("tokenizer.ggml.pre") or "default"


def apply_gguf_pre_tokenizer(tokenizer, gguf_path: Path) -> dict:
    """Give a transformers tokenizer loaded from ``gguf_path`` llama.cpp's pre-tokenizer for the file;
    returns what was done, for the cell's params."""
    model, pre = gguf_tokenizer_names(gguf_path)
    record = {"model": model, "pre": pre}
    if model == "llama":
        return {**record, "pre_tokenizer": "none: a SentencePiece vocabulary (transformers' conversion)"}
    if model != "gpt2":
        return {**record, "pre_tokenizer": "transformers' conversion, not compared with llama.cpp"}
    rule = RULES.get(pre)
    if rule is None:
        raise UnknownPreTokenizer(
            f"{gguf_path}: tokenizer.ggml.pre is {pre!r}, which harness.sources.gguf_pretokenizer.RULES does not know "
            f"(known: {', '.join(sorted(RULES))}); transformers would split its text differently from llama.cpp")
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = rule_pre_tokenizer(rule)
    backend.model.ignore_merges = rule.ignore_merges
    return {**record, "pre_tokenizer": f"llama.cpp's {rule.group} regexes", "ignore_merges": rule.ignore_merges}


def rule_pre_tokenizer(rule: Rule):
    """A ``tokenizers`` pre-tokenizer that cuts a text as llama.cpp's ``rule`` does, then maps its bytes."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(regex), behavior="isolated") for regex in rule.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


#: a text whose pieces tell the rules apart: digit runs, contractions, runs of spaces and line breaks, symbols
PROBE = "I'M we'll 12345 3.14 ½ x² 1,234  \n\n  0.\r\n\tcafé 日本語 😀 $5+3<=4^2~| (x) -- \u00a0 8   end "
#: the ``tokenizer.ggml.pre`` written for a group when a Hugging Face tokenizer is converted (every name of a
#: group reads alike in llama.cpp); tried in this order
GROUP_NAMES = {"gpt2": "gpt-2", "starcoder": "starcoder", "llama3": "llama-bpe", "dbrx": "dbrx", "qwen2": "qwen2",
               "default": "default"}


def identify_pre_tokenizer(backend_tokenizer) -> str | None:
    """The ``tokenizer.ggml.pre`` name whose llama.cpp rule cuts :data:`PROBE` into the same pieces as a byte-level
    ``tokenizers.Tokenizer``'s own pre-tokenizer, with the same ``ignore_merges``; None when no rule does."""
    if backend_tokenizer.pre_tokenizer is None:
        return None
    theirs = [piece for piece, _ in backend_tokenizer.pre_tokenizer.pre_tokenize_str(PROBE)]
    ignore_merges = bool(getattr(backend_tokenizer.model, "ignore_merges", False))
    rules = {rule.group: rule for rule in RULES.values()}
    for group, name in GROUP_NAMES.items():
        rule = rules[group]
        ours = [piece for piece, _ in rule_pre_tokenizer(rule).pre_tokenize_str(PROBE)]
        if ours == theirs and rule.ignore_merges == ignore_merges:
            return name
    return None
