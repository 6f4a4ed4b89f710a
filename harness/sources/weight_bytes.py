"""Bits per weight from the bytes on disk, for the whole model and for the linear layers of its transformer
blocks apart. With a 49k vocabulary the embedding is most of a small model's weights and most methods leave it
unquantized, so a whole-file figure hides what a method did to the layers it quantizes.

A quantized layer is stored under other names than its full-precision weight: GPTQ and AWQ as
``qweight``/``qzeros``/``scales``/``g_idx``, torchao as ``_weight_qdata``/``_weight_scale``, quanto as
``weight._data``/``weight._scale``, HQQ as ``W_q``/``scale``/``zero`` in a ``qmodel.pt``. Every stored tensor
counts toward the module its name lies under, and the denominator is the full-precision model's parameter count
of those modules: a GGUF's tensor table holds the logical element counts; an HF directory's config describes
the model, whose parameters are counted on PyTorch's meta device (shapes only, nothing allocated). Tensors are
read from the headers (GGUF, safetensors) or, for a torch ``.bin``/``.pt``, with ``torch.load(weights_only=True)``
(no code from the file runs). A library that quantizes at load (bitsandbytes) has no file to read: its footprint
is what the hf backend loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.core.errors import MissingDependency, UserError, require
from harness.sources.gguf_header import read_header, tensor_nbytes


class Unmeasured(Exception):
    """The bytes of a model's layers cannot be told apart (the reason is recorded instead of a figure)."""


@dataclass(frozen=True)
class WeightBytes:
    """Stored bytes and full-precision parameters, of every tensor and of the blocks' linear layers."""

    tensor_bytes: int
    params: int
    linear_bytes: int
    linear_params: int

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.params

    @property
    def linear_bpw(self) -> float:
        return 8 * self.linear_bytes / self.linear_params

    def as_dict(self) -> dict:
        return {**asdict(self), "bits_per_weight": round(self.bits_per_weight, 4),
                "linear_bpw": round(self.linear_bpw, 4)}


def gguf_weight_bytes(path: Path) -> WeightBytes:
    """A GGUF's tensors: ``blk.N.*`` tensors other than norms are the blocks' linear layers (weights and
    biases); ``token_embd``, ``output``, ``output_norm`` and the norms are the rest."""
    totals = [0, 0, 0, 0]
    for name, elements, kind, _ in read_header(path).tensors:
        nbytes = tensor_nbytes(kind, elements)
        if nbytes is None:
            raise Unmeasured(f"ggml type {kind} of {name} has no known size (gguf-py missing or older)")
        linear = name.startswith("blk.") and "norm" not in name
        totals[0] += nbytes
        totals[1] += elements
        totals[2] += nbytes if linear else 0
        totals[3] += elements if linear else 0
    return WeightBytes(*totals)


#: the files transformers and the quantization libraries write weights to, in the order one is preferred
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "qmodel.pt")


def hf_weight_bytes(directory: Path) -> WeightBytes:
    """An HF directory's stored tensors assigned to the modules of the model its config describes."""
    stored = stored_tensor_bytes(directory)
    params, linear = full_precision_modules(directory)
    modules = set(params) | linear
    by_module: dict[str, int] = {}
    for name, nbytes in stored.items():
        owner = _owner(name, modules)
        by_module[owner] = by_module.get(owner, 0) + nbytes
    linear_bytes = sum(by_module.get(m, 0) for m in linear)
    if linear and not linear_bytes:
        raise Unmeasured(f"{directory}: no stored tensor is named after a linear layer of the config's model "
                         f"(e.g. {sorted(linear)[0]})")
    return WeightBytes(sum(stored.values()), sum(params.values()), linear_bytes,
                       sum(params.get(m, 0) for m in linear))


def _owner(tensor: str, modules: set[str]) -> str:
    """The deepest module whose name prefixes ``tensor`` (``...q_proj.weight._data`` -> ``...q_proj``)."""
    parts = tensor.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in modules:
            return prefix
    return ""


def stored_tensor_bytes(directory: Path) -> dict[str, int]:
    """Every tensor of the directory's weight files by name, in bytes as stored."""
    for pattern in WEIGHT_FILES:
        files = sorted(Path(directory).glob(pattern))
        if files:
            out: dict[str, int] = {}
            for file in files:
                out.update(_safetensors_bytes(file) if file.suffix == ".safetensors" else _torch_file_bytes(file))
            return out
    raise Unmeasured(f"{directory}: no weight file ({', '.join(WEIGHT_FILES)})")


#: the safetensors library's own limit on a header's size
SAFETENSORS_MAX_HEADER = 100_000_000


def _safetensors_bytes(path: Path) -> dict[str, int]:
    """From the header (an 8-byte length, then JSON with each tensor's ``data_offsets``): nothing is loaded."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if length > min(size - 8, SAFETENSORS_MAX_HEADER):
            raise UserError(f"{path}: not a safetensors file (a header of {length:,} bytes in a file of {size:,})")
        try:
            header = json.loads(fh.read(length))
            return {name: int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
                    for name, entry in header.items() if name != "__metadata__"}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            raise UserError(f"{path}: not a safetensors file (unreadable header)") from None


def _torch_file_bytes(path: Path) -> dict[str, int]:
    """A torch pickle read without running code from it (``weights_only``, memory-mapped: no tensor data is
    read); nested dicts (HQQ's ``qmodel.pt``: module -> its state) give dotted names."""
    torch = require("torch", "hf", f"reading {path.name}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a pickle that needs code to load: refused, not run
        raise Unmeasured(f"{path.name}: torch.load(weights_only=True) refused it ({type(exc).__name__})") from None
    out: dict[str, int] = {}

    def walk(node, name: str) -> None:
        if isinstance(node, torch.Tensor):
            out[name] = _tensor_nbytes(node)
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{name}.{key}" if name else str(key))

    walk(state, "")
    return out


def _tensor_nbytes(tensor) -> int:
    """A tensor's bytes; a tensor subclass (torchao's) is the sum of the plain tensors it is made of."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(_tensor_nbytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()


def full_precision_modules(directory: Path) -> tuple[dict[str, int], set[str]]:
    """The parameters of each module of the full-precision model ``config.json`` describes (tied weights once),
    and the names of the linear layers of its blocks (every ``nn.Linear`` but the output head)."""
    transformers = require("transformers", "hf", "counting a model's parameters")
    import torch

    try:
        config = transformers.AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as exc:
        raise Unmeasured(f"{directory}: no config transformers reads ({type(exc).__name__})") from None
    config.__dict__.pop("quantization_config", None)  # the full-precision model: no quantizer applies
    try:
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, TypeError) as exc:
        raise Unmeasured(f"{directory}: transformers builds no causal LM from its config ({exc})") from None
    params: dict[str, int] = {}
    for name, parameter in model.named_parameters():
        module = name.rpartition(".")[0]
        params[module] = params.get(module, 0) + parameter.numel()
    head = model.get_output_embeddings()
    linear = {name for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and module is not head}
    return params, linear


def weight_bytes(path: Path) -> dict:
    """What the report shows of a model file: its :class:`WeightBytes` as a dict, or ``{"unmeasured": why}``."""
    try:
        measured = hf_weight_bytes(path) if Path(path).is_dir() else gguf_weight_bytes(path)
    except (Unmeasured, MissingDependency) as exc:
        return {"unmeasured": str(exc)}
    if not measured.params or not measured.linear_params:
        return {"unmeasured": f"{path}: no {'linear layer' if measured.params else 'tensor'} found"}
    return measured.as_dict()
