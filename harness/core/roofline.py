"""Bytes a decode step reads and FLOPs a prefill does, from a model's shape: the numerators of MBU and MFU.

A decode step reads every weight once (as loaded, after any quantization) plus the KV cache so far;
decode tokens/s times those bytes is the bandwidth the engine achieved, and its fraction of the
machine's read bandwidth (:mod:`harness.results.probe`) is the model bandwidth utilization (MBU).
A prefill of P tokens does 2·params·P FLOPs in its matmuls plus the causal attention's
QKᵀ and AV: token i attends to i positions, 4·heads·head_dim·i FLOPs per layer, so
2·layers·heads·head_dim·P·(P+1) in all; its fraction of the machine's GEMM rate is the MFU.
Counting every parameter as a matmul weight overstates an untied input embedding (a lookup); the
tied embeddings of the small models here are the output head, a real matmul.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelShape:
    """What the formulas need of a model, from its config (hf) or GGUF metadata (llama.cpp, gpt4all)."""

    n_params: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    #: bytes of one cached K or V element (f16 in llama.cpp by default; the activations' dtype in hf)
    kv_dtype_bytes: int
    #: the dtype the matmuls run in, the key of the probe's GEMM ceilings (fp32, bf16, fp16)
    compute_dtype: str

    def as_dict(self) -> dict:
        return asdict(self)


def kv_bytes_per_position(shape: ModelShape) -> int:
    """K and V of one position in every layer: layers × KV heads × head dim × 2 × dtype bytes."""
    return shape.n_layers * shape.n_kv_heads * shape.head_dim * 2 * shape.kv_dtype_bytes


def mean_decode_depth(prompt_tokens: int, new_tokens: int) -> float:
    """Mean cached positions a decode step reads. Decode speed counts tokens 2..new; token k comes from
    the step fed position P+k-2, which attends to P+k-1 positions: P+1 .. P+new-1, mean P + new/2."""
    return prompt_tokens + new_tokens / 2


def decode_bytes_per_token(weight_bytes: int, shape: ModelShape, depth: float, batch_size: int = 1) -> float:
    """Bytes read per decoded token: one pass over the weights serves the batch, each sequence reads its
    own KV cache."""
    return (weight_bytes + batch_size * kv_bytes_per_position(shape) * depth) / batch_size


def prefill_flops(shape: ModelShape, prompt_tokens: int) -> float:
    """FLOPs of a causal prefill of ``prompt_tokens`` tokens: matmuls plus attention."""
    p = prompt_tokens
    return 2 * shape.n_params * p + 2 * shape.n_layers * shape.n_heads * shape.head_dim * p * (p + 1)


def metadata_shape(value: Callable[[str], object], n_params: int, compute_dtype: str = "fp32",
                   kv_dtype_bytes: int = 2) -> ModelShape:
    """A shape from GGUF metadata (``{arch}.block_count``, ``.attention.head_count[_kv]``,
    ``.attention.key_length``, else embedding / heads); ``value`` reads a key, None when absent."""
    arch = value("general.architecture")
    heads = int(value(f"{arch}.attention.head_count"))
    head_dim = value(f"{arch}.attention.key_length") or int(value(f"{arch}.embedding_length")) // heads
    return ModelShape(n_params=n_params, n_layers=int(value(f"{arch}.block_count")), n_heads=heads,
                      n_kv_heads=int(value(f"{arch}.attention.head_count_kv") or heads), head_dim=int(head_dim),
                      kv_dtype_bytes=kv_dtype_bytes, compute_dtype=compute_dtype)


def gguf_shape(path, compute_dtype: str = "fp32", kv_dtype_bytes: int = 2) -> ModelShape:
    """A GGUF file's shape, parameters counted from its tensors (parsing the file takes seconds)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def value(name: str):
        field = reader.fields.get(name)
        return None if field is None else field.contents()

    return metadata_shape(value, int(sum(int(t.n_elements) for t in reader.tensors)), compute_dtype,
                          kv_dtype_bytes)
