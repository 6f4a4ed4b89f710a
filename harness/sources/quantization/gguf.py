"""A GGUF quantization ladder from one source model: the F32 or F16 base (a GGUF source dequantized by
gguf-py, a Hugging Face source written by :mod:`harness.sources.hf_to_gguf`), then llama.cpp's own quantizer
(``llama_model_quantize``, as llama-quantize runs it) applied to the F32 base, with an importance matrix when
the suite asks for one (:mod:`harness.sources.imatrix`). The ``gguf`` method of :mod:`harness.sources.quantization`.

Suite syntax: ``quantize: Q4_K_M`` (the shorthand: the cell ids it always had) or
``quantize: {method: gguf, type: Q4_K_M, imatrix: {dataset: NAME, chunks: N}, token_embedding_type: F32}``
(``token_embedding_type`` and ``output_tensor_type`` are llama-quantize's flags of those names: without them
llama.cpp picks the embedding's and the head's types by its own rules for TYPE).

Each file is cached under the user cache dir keyed by the source's sha256, the type and, for a rung made with
an importance matrix, the matrix's fingerprint (the calibration text's sha256, chunks, window, library
versions); every entry is a cache entry (:mod:`harness.sources.cache_entry`): built once by whichever run
needs it first, never seen half-written, rebuilt if damaged. A ladder built from an already quantized file
(SmolLM2 ships as Q4_1) measures what re-quantizing those weights costs: the F32 rung holds the Q4_1 weights
exactly, and is the reference the other rungs are compared with.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from harness.core.errors import UserError, require
from harness.core.files import read_json_object
from harness.core.settings import StrictModel, new_key
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import Entry, announce, cached
from harness.sources.child import child_main, run_child
from harness.sources.fingerprint import sha256_bytes
from harness.sources.gguf_header import read_header
from harness.sources.quantization.method import Calibration, QuantMethod

#: ``quantize:`` values: the base, dequantized (a GGUF source) or written (an HF source) to these two ...
DEQUANTIZED = {"F32": "f32", "F16": "f16"}
#: ... and llama.cpp's quantizer makes these from the F32 rung (llama.cpp's LLAMA_FTYPE_MOSTLY_* names)
QUANTIZED = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0", "Q3_K_M", "Q3_K_S", "Q2_K",
             "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS")
TYPES = tuple(DEQUANTIZED) + QUANTIZED
#: types the harness makes only with an importance matrix: llama.cpp refuses the IQ2 ones without one, and the
#: IQ3 grids are designed around one too
NEED_IMATRIX = tuple(t for t in QUANTIZED if t.startswith(("IQ2", "IQ3")))
#: the ggml tensor types a rung's token embedding or output head can be given (llama-quantize's
#: ``--token-embedding-type`` / ``--output-tensor-type``; llama_cpp's ``GGML_TYPE_*``)
TENSOR_TYPES = ("F32", "F16", "Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K",
                "IQ4_NL", "IQ4_XS")


class ImatrixSpec(StrictModel):
    """The calibration of an importance matrix, as llama-imatrix takes it (``-f TEXT --chunks N -c N_CTX``)."""

    dataset: str = Field(description="a dataset of this suite: the calibration text")
    chunks: int = Field(100, ge=1, description="windows of n_ctx tokens read from the start of the text")
    n_ctx: int = Field(512, ge=16, description="tokens a window (llama-imatrix's default 512)")


class GgufQuantize(QuantMethod):
    """``quantize: {method: gguf, type: TYPE, imatrix: {...}}``; ``quantize: TYPE`` is the same without imatrix."""

    produces: ClassVar = "gguf"
    libraries: ClassVar = ("llama-cpp-python", "gguf")
    extra: ClassVar = "gguf"
    modules: ClassVar = ("llama_cpp", "gguf")
    calibration_key: ClassVar = "imatrix"

    method: Literal["gguf"] = "gguf"
    type: str = Field(description="F32/F16 base, or a llama.cpp type: " + ", ".join(QUANTIZED))
    imatrix: ImatrixSpec | None = Field(None, description="weigh the rounding by an importance matrix computed "
                                        "from the source's HF model on a calibration dataset")
    token_embedding_type: str | None = new_key(None, description="the token embedding's type (llama-quantize "
                                               "--token-embedding-type): " + ", ".join(TENSOR_TYPES))
    output_tensor_type: str | None = new_key(None, description="the output head's type (llama-quantize "
                                             "--output-tensor-type); a model that ties its head to the embedding "
                                             "has none: token_embedding_type sets both")

    @model_validator(mode="after")
    def _known_type(self):
        problem = type_problem(self.type, self.imatrix is not None)
        for key in ("token_embedding_type", "output_tensor_type"):
            value = getattr(self, key)
            if problem or value is None:
                continue
            if value not in TENSOR_TYPES:
                problem = f"{key}: expected one of {', '.join(TENSOR_TYPES)}, got {value!r}"
            elif self.type in DEQUANTIZED:
                problem = f"{key}: applies to llama.cpp's quantized types, not to the {self.type} base"
        if problem:
            raise ValueError(problem)
        return self

    @property
    def tensor_overrides(self) -> dict[str, str]:
        """The tensors whose type the suite sets (llama.cpp's names), in the order the label shows them."""
        names = {"token_embd": self.token_embedding_type, "output": self.output_tensor_type}
        return {name: value for name, value in names.items() if value is not None}

    @property
    def label(self) -> str:
        """What the model's source string shows after ``#quantize=``: ``Q4_K_M``,
        ``Q4_K_M+imatrix=pride/100x512``, ``Q4_K_M+token_embd=F32``."""
        parts = [self.type]
        if self.imatrix is not None:
            m = self.imatrix
            parts.append(f"imatrix={m.dataset}/{m.chunks}x{m.n_ctx}")
        parts += [f"{name}={value}" for name, value in self.tensor_overrides.items()]
        return "+".join(parts)


def type_problem(quant_type: str, with_imatrix: bool) -> str | None:
    """Why ``quant_type`` (with or without an importance matrix) cannot be made, or None."""
    if quant_type not in TYPES:
        return f"quantize: expected one of {', '.join(TYPES)}, got {quant_type!r}"
    if quant_type in NEED_IMATRIX and not with_imatrix:
        return (f"quantize: {quant_type} needs an importance matrix: "
                "{method: gguf, type: ..., imatrix: {dataset: NAME}}")
    if quant_type in DEQUANTIZED and with_imatrix:
        return f"quantize: {quant_type} is the unquantized base: an importance matrix does not apply"
    return None


def derived_path(source_key: str, quant_type: str) -> Path:
    return cache_dir() / "quantized" / f"{source_key}-{quant_type}.gguf"


def source_key(source: Path, source_sha256: str) -> str:
    """A GGUF source's files keep the names they always had; an HF source's carry the writer's format."""
    if Path(source).is_dir():
        from harness.sources.hf_to_gguf import FORMAT

        return f"{source_sha256[:32]}-hf{FORMAT}"
    return source_sha256[:32]


def derive_gguf(source: Path, source_sha256: str, quantize: str | GgufQuantize, threads: int | None = None,
                calibration: Calibration | None = None) -> Path:
    """The rung ``quantize`` of ``source``'s ladder (a GGUF file or an HF directory), made once."""
    return make_rung(source, source_sha256, quantize, threads, calibration).path


def make_rung(source: Path, source_sha256: str, quantize: str | GgufQuantize, threads: int | None = None,
              calibration: Calibration | None = None) -> Entry:
    """:func:`derive_gguf`'s cache entry: the rung's path and whether this call made it (``build_s``)."""
    spec = quantize if isinstance(quantize, GgufQuantize) else GgufQuantize(type=quantize)
    key = source_key(source, source_sha256)
    if spec.type in DEQUANTIZED:
        return cached(derived_path(key, spec.type), lambda tmp: _write_base(source, tmp, DEQUANTIZED[spec.type]),
                      read_header)
    base = derive_gguf(source, source_sha256, "F32", threads)
    require("llama_cpp", "gguf", f"quantizing to {spec.type}")
    imatrix_file, rung = None, spec.type
    if spec.imatrix is not None:
        if calibration is None:
            raise UserError(f"quantize: {spec.label}: the calibration dataset was not resolved")
        fingerprint = imatrix_fingerprint(spec, calibration)
        imatrix_file = _imatrix(source, source_sha256, key, fingerprint, spec, calibration, threads)
        rung += f"-imatrix-{fingerprint[:16]}"
    rung += "".join(f"-{name}-{value}" for name, value in spec.tensor_overrides.items())
    target = derived_path(key, rung)
    recipe = {"base": str(base), "type": spec.type, "label": spec.label, "threads": threads,
              "imatrix": str(imatrix_file) if imatrix_file else None, "tensor_types": spec.tensor_overrides}

    def build(tmp: Path) -> None:
        run_child("harness.sources.quantization.gguf", [str(tmp), str(target)], f"quantizing {base} to {spec.label}",
                  stdin=json.dumps(recipe), echo=False)

    entry = cached(target, build, read_header)
    announce(spec.label, source, target, entry.build_s)
    return entry


#: beside a quantized rung, how it was made (``RUNG.gguf.json``: the quantizer's time and peak RSS)
RUNG_RECORD_SUFFIX = ".json"


def _timed_quantize(recipe: dict, tmp: Path, target: Path) -> None:
    """The child's work: :func:`quantize_file`, its wall time and the child's peak RSS recorded beside the rung (a
    cache entry of its own, written before the rung is published: a rung never lacks the record of its build)."""
    from harness.core.memory import hwm_bytes
    from harness.sources.imatrix import load_imatrix

    start = time.perf_counter()
    lib = require("llama_cpp", "gguf", f"quantizing to {recipe['type']}")
    matrix = load_imatrix(Path(recipe["imatrix"])) if recipe["imatrix"] else None
    quantize_file(lib, Path(recipe["base"]), tmp, recipe["type"], recipe["threads"], matrix, recipe["tensor_types"])
    record = {"label": recipe["label"], "quantize_s": time.perf_counter() - start,
              "peak_rss_mb": hwm_bytes() / 2**20, "threads": recipe["threads"] or os.cpu_count()}
    cached(rung_record_path(target), lambda path: path.write_text(json.dumps(record) + "\n", encoding="utf-8"),
           lambda path: read_json_object(path, "a rung's record"), refresh=True)


def rung_record_path(rung: Path) -> Path:
    return rung.with_name(rung.name + RUNG_RECORD_SUFFIX)


def rung_record(rung: Path) -> dict | None:
    """How a quantized rung was made (``quantize_s``), where this harness made it; None for the F32/F16 base and
    for a rung made before the record existed."""
    try:
        return read_json_object(rung_record_path(rung), "a rung's record")
    except (UserError, ValueError):
        return None


def _write_base(source: Path, target: Path, dtype: Literal["f32", "f16"]) -> None:
    if Path(source).is_dir():
        from harness.sources.hf_to_gguf import write_gguf

        write_gguf(source, target, dtype)
    else:
        from harness.sources.gguf_rewrite import rewrite_gguf

        rewrite_gguf(source, target, dequantize_to=dtype)


def quantize_file(lib, base: Path, target: Path, quant_type: str, threads: int | None, matrix: dict | None,
                  tensor_types: dict[str, str] | None = None) -> None:
    """llama.cpp's quantizer (``lib``: llama_cpp's bindings) from ``base`` to ``target``, weighted by ``matrix``
    ({tensor name: importance per input column}) when given, with the types ``tensor_types`` gives the token
    embedding and the output head ({"token_embd" | "output": ggml type name})."""
    params = lib.llama_model_quantize_default_params()
    params.ftype = getattr(lib, f"LLAMA_FTYPE_MOSTLY_{quant_type}")
    params.nthread = threads or os.cpu_count() or 1
    fields = {"token_embd": "token_embedding_type", "output": "output_tensor_type"}
    for name, ggml_type in (tensor_types or {}).items():
        setattr(params, fields[name], getattr(lib, f"GGML_TYPE_{ggml_type}"))
    if matrix is not None:
        from harness.sources.imatrix import QuantizeImatrix

        entries = QuantizeImatrix(lib, matrix)  # alive until the call returns
        params.imatrix = entries.pointer
    rc = lib.llama_model_quantize(str(base).encode(), str(target).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama.cpp could not quantize {base} to {quant_type} (code {rc})")


def imatrix_fingerprint(spec: GgufQuantize, calibration: Calibration) -> str:
    """What an importance matrix depends on besides the source: the calibration text, how much of it is read,
    and the libraries that compute it."""
    import torch
    import transformers

    from harness.sources.hf_to_gguf import FORMAT

    identity = {"text": calibration.sha256, "chunks": spec.imatrix.chunks, "n_ctx": spec.imatrix.n_ctx,
                "torch": torch.__version__, "transformers": transformers.__version__,
                "llama_cpp": require("llama_cpp", "gguf", "quantizing").__version__, "writer": FORMAT}
    return sha256_bytes(json.dumps(identity, sort_keys=True).encode())


def _imatrix(source: Path, source_sha256: str, key: str, fingerprint: str, spec: GgufQuantize,
             calibration: Calibration, threads: int | None) -> Path:
    """The importance matrix's file, computed from the HF model (a GGUF source's through the GGUF -> HF
    conversion)."""
    from harness.sources.imatrix import compute_imatrix, load_imatrix, save_imatrix

    def make(tmp: Path) -> None:
        hf_dir = source
        if not Path(source).is_dir():
            from harness.sources.gguf_to_hf import ensure_materialized

            hf_dir, _ = ensure_materialized(source, source_sha256)
        matrix = compute_imatrix(Path(hf_dir), calibration.text, spec.imatrix.chunks, spec.imatrix.n_ctx, threads)
        save_imatrix(matrix, tmp)

    return cached(cache_dir() / "imatrix" / f"{key}-{fingerprint[:16]}.npz", make, load_imatrix).path


if __name__ == "__main__":
    child_main(lambda: _timed_quantize(json.loads(sys.stdin.read()), Path(sys.argv[1]), Path(sys.argv[2])))
