"""GGUF files read and derived with gguf-py: which quantization types the weights really have, and copies
with the weights dequantized (F32/F16) or the metadata replaced.

A dequantized copy gives llama.cpp the exact weights transformers computes with after dequantizing, so
the two backends can be compared on equal weights (what is left is the arithmetic), and it is the top
rung of a quantization ladder built from one shipped GGUF. A copy with replaced metadata lets an older
llama.cpp (gpt4all's) load a model whose tokenizer it knows under another name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from harness.core.errors import require

#: set by the writer itself
_WRITER_FIELDS = ("general.architecture",)


def tensor_types(path: Path) -> dict[str, float]:
    """Share of the weights (by count) stored in each type, largest first. A file's nominal type can hide
    fallbacks: llama.cpp's K-quants need rows of a multiple of 256, so SmolLM2's 576-wide tensors in a
    "Q6_K" file are Q8_0 (80% of its weights)."""
    gguf = require("gguf", "gguf", "reading a GGUF file's tensor types")
    counts: dict[str, int] = {}
    for tensor in gguf.GGUFReader(path).tensors:
        counts[tensor.tensor_type.name] = counts.get(tensor.tensor_type.name, 0) + int(tensor.n_elements)
    total = sum(counts.values())
    return {name: round(n / total, 4) for name, n in sorted(counts.items(), key=lambda kv: -kv[1])}


def rewrite_gguf(source: Path, target: Path, metadata: dict | None = None,
                 dequantize_to: Literal["f32", "f16"] | None = None) -> Path:
    """Write ``target`` from ``source`` with the ``metadata`` values replaced (same types) and, with
    ``dequantize_to``, every tensor dequantized (1-D tensors stay F32, as llama.cpp's converter keeps
    norms and biases). ``target`` is written in place: a cache entry's temp path
    (:func:`harness.sources.cache_entry.cached` publishes it whole)."""
    gguf = require("gguf", "gguf", "writing a GGUF file")
    from gguf.quants import dequantize

    metadata = dict(metadata or {})
    if dequantize_to is not None:
        file_type = gguf.LlamaFileType.ALL_F32 if dequantize_to == "f32" else gguf.LlamaFileType.MOSTLY_F16
        metadata["general.file_type"] = int(file_type)
    reader = gguf.GGUFReader(source)
    unknown = set(metadata) - set(reader.fields)
    if unknown - {"general.file_type"}:
        raise KeyError(f"{source} has no metadata field {sorted(unknown)[0]}")
    writer = gguf.GGUFWriter(target, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in _WRITER_FIELDS or name in metadata:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    for name, value in metadata.items():
        field = reader.fields.get(name)
        writer.add_key_value(name, value, field.types[0] if field else gguf.GGUFValueType.UINT32)
    for tensor in reader.tensors:
        if dequantize_to is None:
            writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)
            continue
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data.astype(np.float16) if dequantize_to == "f16" and data.ndim > 1 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
