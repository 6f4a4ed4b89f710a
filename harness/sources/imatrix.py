"""An importance matrix for llama.cpp's quantizer, computed from the Hugging Face model in Python.

llama-imatrix runs the model over ``chunks`` windows of ``n_ctx`` tokens of a calibration text (the text
tokenized once, with BOS where the vocabulary adds one; each window's first token replaced by BOS) and, for
every matrix multiplication with a weight of a block (``blk.N.*``; the output head only on request, never
here), accumulates the square of each input column over every token, with the number of tokens. The
quantizer weighs each column's rounding error by the mean, sum / count. Here forward hooks on every linear
layer of the blocks collect the same sums, keyed by the GGUF tensor each layer becomes
(:func:`harness.sources.hf_to_gguf.write_gguf`): the query and key rows are reordered there, their input
columns are not, so one vector per input column serves both files.

The result goes to ``llama_model_quantize`` through ``llama_model_quantize_params.imatrix``, a
NULL-terminated array of ``llama_model_imatrix_data {name, data, size}`` (:class:`QuantizeImatrix`).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from harness.core.errors import UserError, require
from harness.sources.hf_to_gguf import SUPPORTED_ARCHITECTURES


def calibration_windows(ids: list[int], n_ctx: int, chunks: int, bos_id: int | None) -> list[list[int]]:
    """The first ``chunks`` whole windows of ``n_ctx`` tokens, each starting with BOS when there is one."""
    n_chunks = min(chunks, len(ids) // n_ctx)
    if n_chunks == 0:
        raise UserError(f"the calibration text has {len(ids):,} tokens, less than one window of {n_ctx:,}")
    windows = [list(ids[i * n_ctx:(i + 1) * n_ctx]) for i in range(n_chunks)]
    if bos_id is not None:
        for window in windows:
            window[0] = bos_id
    return windows


def compute_imatrix(hf_dir: Path, text: str, chunks: int, n_ctx: int,
                    threads: int | None = None) -> dict[str, np.ndarray]:
    """``{GGUF tensor name: mean square of each input column}`` over the calibration windows of ``text``."""
    torch = require("torch", "hf", "computing an importance matrix")
    transformers = require("transformers", "hf", "computing an importance matrix")
    gguf = require("gguf", "gguf", "naming an importance matrix's tensors")
    if threads:
        torch.set_num_threads(threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    if type(model).__name__ not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{hf_dir}: an importance matrix is computed for {', '.join(SUPPORTED_ARCHITECTURES)} "
                        f"models, not {type(model).__name__}")
    model.eval()
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id if ids and ids[0] == tokenizer.bos_token_id else None
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, model.config.num_hidden_layers)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def collect(name: str):
        def hook(_module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    handles = []
    for module_name, module in model.named_modules():
        gguf_name = names.get_name(module_name)
        if isinstance(module, torch.nn.Linear) and gguf_name and gguf_name.startswith("blk."):
            handles.append(module.register_forward_pre_hook(collect(gguf_name + ".weight")))
    try:
        with torch.no_grad():
            for window in calibration_windows(ids, n_ctx, chunks, bos):
                model.base_model(torch.tensor([window]))  # the blocks only: the output head is not collected
    finally:
        for handle in handles:
            handle.remove()
    return {name: (sums[name] / counts[name]).float().numpy() for name in sorted(sums)}


def save_imatrix(matrix: dict[str, np.ndarray], path: Path) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **matrix)


def load_imatrix(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name].astype(np.float32) for name in data.files}


class QuantizeImatrix:
    """``matrix`` as the NULL-terminated ``llama_model_imatrix_data`` array llama.cpp reads; the object keeps
    the names and values alive while the quantizer holds pointers into them."""

    def __init__(self, lib, matrix: dict[str, np.ndarray]):
        self._names = [name.encode() for name in matrix]
        self._values = [np.ascontiguousarray(v, dtype=np.float32) for v in matrix.values()]
        entries = (lib.llama_model_imatrix_data * (len(matrix) + 1))()
        for entry, name, values in zip(entries, self._names, self._values, strict=False):
            entry.name = name
            entry.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            entry.size = values.size
        self.entries = entries  # the last entry stays zeroed: name NULL ends the array

    @property
    def pointer(self):
        return ctypes.cast(self.entries, ctypes.POINTER(type(self.entries[0])))
