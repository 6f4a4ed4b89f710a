"""A GGUF quantization ladder from one source model: the source dequantized to F32 or F16 (gguf-py),
then re-quantized by llama.cpp's own quantizer (``llama_model_quantize``, as llama-quantize runs it).

Each rung is a cache entry (:mod:`harness.sources.cache_entry`) keyed by the source's sha256 and the type:
built once by whichever run needs it first, never seen half-written, rebuilt if truncated. A ladder built
from an already quantized file (SmolLM2 ships as Q4_1) measures what re-quantizing those weights costs: the
F32 rung holds the Q4_1 weights exactly, and is the reference the other rungs are compared with.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from harness.core.errors import require
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import cached
from harness.sources.gguf_header import read_header

#: ``quantize:`` values: gguf-py dequantizes to these two ...
DEQUANTIZED = {"F32": "f32", "F16": "f16"}
#: ... and llama.cpp's quantizer makes these from the F32 rung (llama.cpp's LLAMA_FTYPE_MOSTLY_* names)
QUANTIZED = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_M", "Q3_K_S", "Q2_K")
TYPES = tuple(DEQUANTIZED) + QUANTIZED


def derived_path(source_sha256: str, quant_type: str) -> Path:
    return cache_dir() / "quantized" / f"{source_sha256[:32]}-{quant_type}.gguf"


def derive_gguf(source: Path, source_sha256: str, quant_type: str, threads: int | None = None) -> Path:
    """The ``quant_type`` rung of ``source``'s ladder, made once."""
    from harness.sources.gguf_rewrite import rewrite_gguf

    def build(tmp: Path) -> None:
        if quant_type in DEQUANTIZED:
            rewrite_gguf(source, tmp, dequantize_to=DEQUANTIZED[quant_type])
            return
        base = derive_gguf(source, source_sha256, "F32", threads)
        lib = require("llama_cpp", "gguf", f"quantizing to {quant_type}")
        params = lib.llama_model_quantize_default_params()
        params.ftype = getattr(lib, f"LLAMA_FTYPE_MOSTLY_{quant_type}")
        params.nthread = threads or os.cpu_count() or 1
        rc = lib.llama_model_quantize(str(base).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not quantize {base} to {quant_type} (code {rc})")

    return cached(derived_path(source_sha256, quant_type), build, read_header).path
