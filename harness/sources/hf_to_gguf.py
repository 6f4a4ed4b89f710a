"""A GGUF file written from a Hugging Face (safetensors) Llama model, so an HF source reaches every GGUF rung.

An equivalent of llama.cpp's ``convert_hf_to_gguf.py`` for the architecture the harness tests, written with
gguf-py: its tensor-name map turns ``model.layers.0.self_attn.q_proj`` into ``blk.0.attn_q``, the llama
hyper-parameters go under ``llama.*``, and the query and key rows are reordered from transformers' rotary
layout (the two halves of each head) into llama.cpp's (the pairs interleaved). 2-D weights are F32 or F16,
norms F32, as the converter writes them; a tied output head is left out (llama.cpp reuses the embedding).

The vocabulary: a directory whose tokenizer the harness made from a GGUF (``tokenizer_source.json``, written by
:mod:`harness.sources.gguf_to_hf`) gets that GGUF's ``tokenizer.*`` metadata unchanged, so llama.cpp
tokenizes exactly as it does on the original file; a plain byte-level BPE ``tokenizer.json`` (GPT-2 style) is
written as the converter's ``gpt2`` vocabulary, its pre-tokenizer named by the llama.cpp rule that cuts text
into the same pieces (:func:`harness.sources.gguf_pretokenizer.identify_pre_tokenizer`). Anything else is
refused in one line by :func:`check_convertible`, which ``validate`` runs too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from harness.core.errors import UserError, require
from harness.sources.fingerprint import sha256_file
from harness.sources.gguf_to_hf import TOKENIZER_SOURCE

#: bump when the written file changes, so cached bases (and the rungs made from them) are rebuilt
FORMAT = 1
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
SUPPORTED_TOKENIZERS = ("a tokenizer the harness made from a GGUF (tokenizer_source.json)",
                        "a byte-level BPE tokenizer.json (GPT-2 style) whose pre-tokenizer llama.cpp knows")
_WHAT = (f"converting a Hugging Face model to GGUF supports {', '.join(SUPPORTED_ARCHITECTURES)} with "
         f"{' or '.join(SUPPORTED_TOKENIZERS)}")


def _config(hf_dir: Path) -> dict:
    path = Path(hf_dir) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read a model config ({type(exc).__name__}); {_WHAT}") from None


def check_convertible(hf_dir: Path) -> str:
    """Raise UserError naming what is supported unless the directory's model and tokenizer can be written as a
    GGUF; returns how the vocabulary will be written (``gguf:PATH`` or ``gpt2:PRE``)."""
    hf_dir = Path(hf_dir)
    config = _config(hf_dir)
    architectures = config.get("architectures") or []
    if architectures != ["LlamaForCausalLM"]:
        raise UserError(f"{hf_dir}: architecture {', '.join(architectures) or 'unknown'}: {_WHAT}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise UserError(f"{hf_dir}: rope scaling {rope.get('rope_type', rope.get('type'))!r}: {_WHAT} and "
                        "unscaled rotary embeddings")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise UserError(f"{hf_dir}: attention_bias/mlp_bias: {_WHAT} and linear layers without biases")
    return _vocabulary(hf_dir)


def _vocabulary(hf_dir: Path) -> str:
    source = hf_dir / TOKENIZER_SOURCE
    if source.is_file():
        record = json.loads(source.read_text(encoding="utf-8"))
        gguf_path = Path(record["gguf"])
        if not gguf_path.is_file() or sha256_file(gguf_path) != record["sha256"]:
            raise UserError(f"{source}: the GGUF its tokenizer came from ({gguf_path}) is gone or has changed; "
                            "convert that GGUF again")
        return f"gguf:{gguf_path}"
    tokenizer_json = hf_dir / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UserError(f"{hf_dir}: no tokenizer.json; {_WHAT}")
    tokenizers = require("tokenizers", "hf", "converting a Hugging Face tokenizer to GGUF")
    from harness.sources.gguf_pretokenizer import identify_pre_tokenizer

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    model_type = (data.get("model") or {}).get("type")
    decoder = (data.get("decoder") or {}).get("type")
    if model_type != "BPE" or decoder != "ByteLevel" or data.get("normalizer") is not None:
        raise UserError(f"{tokenizer_json}: a {model_type} model, decoder {decoder}, normalizer "
                        f"{(data.get('normalizer') or {}).get('type')}: {_WHAT}")
    pre = identify_pre_tokenizer(tokenizers.Tokenizer.from_file(str(tokenizer_json)))
    if pre is None:
        raise UserError(f"{tokenizer_json}: its pre-tokenizer cuts text unlike every llama.cpp rule the harness "
                        f"knows (harness.sources.gguf_pretokenizer.RULES); {_WHAT}")
    return f"gpt2:{pre}"


def write_gguf(hf_dir: Path, target: Path, dtype: Literal["f32", "f16"]) -> Path:
    """Write ``hf_dir``'s model as a GGUF file at ``target`` (the caller renames it into the cache)."""
    gguf = require("gguf", "gguf", "writing a GGUF file")
    transformers = require("transformers", "hf", "converting a Hugging Face model to GGUF")
    vocabulary = check_convertible(hf_dir)
    config = transformers.AutoConfig.from_pretrained(hf_dir)
    writer = gguf.GGUFWriter(target, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    _write_hyperparameters(writer, config, gguf, dtype)
    kind, _, detail = vocabulary.partition(":")
    if kind == "gguf":
        _copy_vocabulary(writer, Path(detail), config.vocab_size)
    else:
        _write_gpt2_vocabulary(writer, hf_dir, detail, config.vocab_size, gguf)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for name, weights in _weights(hf_dir):
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise UserError(f"{hf_dir}: tensor {name} has no llama GGUF name; {_WHAT}")
        if gguf_name.endswith("attn_q.weight"):
            weights = interleave_rotary(weights, config.num_attention_heads)
        elif gguf_name.endswith("attn_k.weight"):
            weights = interleave_rotary(weights, config.num_key_value_heads)
        writer.add_tensor(gguf_name, weights.astype(np.float16) if dtype == "f16" and weights.ndim > 1 else weights)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target


def interleave_rotary(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder a query or key projection's rows from transformers' rotary layout (each head's first half of
    dimensions, then its second half) to llama.cpp's (dimension i of each half side by side)."""
    rows = weights.shape[0]
    per_half = rows // n_heads // 2
    return weights.reshape(n_heads, 2, per_half, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _write_hyperparameters(writer, config, gguf, dtype: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(Path(str(config.name_or_path or "model")).name)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if head_dim != config.hidden_size // config.num_attention_heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)


def _copy_vocabulary(writer, gguf_path: Path, vocab_size: int) -> None:
    gguf = require("gguf", "gguf", "reading a GGUF's vocabulary")
    from harness.sources.gguf_rewrite import copy_fields

    reader = gguf.GGUFReader(gguf_path)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None or len(tokens.data) != vocab_size:
        raise UserError(f"{gguf_path}: its vocabulary has {len(tokens.data) if tokens else 0:,} tokens, the model "
                        f"{vocab_size:,}")
    copy_fields(reader, writer, lambda name: name.startswith("tokenizer."))


def _write_gpt2_vocabulary(writer, hf_dir: Path, pre: str, vocab_size: int, gguf) -> None:
    """The converter's ``gpt2`` vocabulary: the byte-level token strings by id (ids the tokenizer lacks become
    ``[PADn]``), added special tokens as control tokens, the merges and special ids from gguf-py's SpecialVocab."""
    transformers = require("transformers", "hf", "converting a Hugging Face tokenizer to GGUF")
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    if max(by_id) >= vocab_size:
        raise UserError(f"{hf_dir}: the tokenizer has ids up to {max(by_id):,}, the model {vocab_size:,} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(hf_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer, quiet=True)


def _weights(hf_dir: Path):
    """(name, float32 array) of every tensor in the directory's safetensors files."""
    require("torch", "hf", "converting a Hugging Face model to GGUF")
    from safetensors import safe_open

    files = sorted(Path(hf_dir).glob("*.safetensors"))
    if not files:
        raise UserError(f"{hf_dir}: no *.safetensors weights; {_WHAT}")
    for file in files:
        with safe_open(file, framework="pt") as tensors:
            for name in tensors.keys():
                if name.endswith("rotary_emb.inv_freq"):
                    continue
                yield name, tensors.get_tensor(name).float().numpy()
