"""A GGUF's weights written back unquantized (F32 or F16) with gguf-py, metadata and tokenizer kept.

It gives llama.cpp the exact weights transformers computes with after dequantizing, so the two
backends can be compared on equal weights (what is left is the arithmetic), and it is the top rung
of a quantization ladder built from one shipped GGUF.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from harness.errors import require

#: metadata the writer sets itself, or that would be stale after requantizing
_SKIP_FIELDS = ("general.architecture", "general.file_type")


def dequantize_gguf(source: Path, target: Path, out_type: Literal["f32", "f16"] = "f32") -> Path:
    """Write ``target`` from ``source`` with every tensor dequantized; 1-D tensors (norms, biases) stay
    F32 as llama.cpp's converter keeps them. Written to a temp file and renamed."""
    gguf = require("gguf", "hf", "writing a dequantized GGUF")
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(source)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, reader.fields["general.architecture"].contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in _SKIP_FIELDS:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if out_type == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        if out_type == "f16" and data.ndim > 1:
            data = data.astype(np.float16)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, target)
    return target
