"""Half-Quadratic Quantization with hqq's own API (``quantize: {method: hqq, bits: 4, group_size: 64}``).

transformers 5.25's ``HqqConfig`` raises "not available yet", so the model is quantized by
``AutoHQQHFModel.quantize_model`` and saved and loaded by hqq (``save_quantized``/``from_quantized``: the
config and a ``qmodel.pt`` that hqq reads with ``torch.load(weights_only=True)``). hqq replaces the linear
layers of the decoder only: the embedding and the output head stay as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from harness.core.errors import require
from harness.sources.quantization.method import Calibration, QuantMethod


class HqqQuantize(QuantMethod):
    """``{method: hqq, bits: 1 | 2 | 3 | 4 | 8, group_size: N}``."""

    produces: ClassVar = "hf"
    libraries: ClassVar = ("hqq",)
    extra: ClassVar = "hfquant"
    modules: ClassVar = ("hqq",)

    method: Literal["hqq"] = "hqq"
    bits: Literal[1, 2, 3, 4, 8] = 4
    group_size: int = Field(64, ge=8, description="weights per scale and zero point")

    def _models(self):
        return require("hqq.models.hf.base", self.extra, "quantize: {method: hqq}")

    def quantized_model(self, source_dir: Path, calibration: Calibration | None, threads: int):
        import torch
        from hqq.core.quantize import BaseQuantizeConfig
        from transformers import AutoModelForCausalLM

        hqq = self._models()
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
        hqq.AutoHQQHFModel.quantize_model(model, quant_config=BaseQuantizeConfig(nbits=self.bits,
                                                                                 group_size=self.group_size),
                                          compute_dtype=torch.float32, device="cpu")
        return model

    def save(self, model, target: Path) -> None:
        self._models().AutoHQQHFModel.save_quantized(model, str(target))

    def load(self, directory: Path, kwargs: dict):
        import torch

        dtype = kwargs.get("dtype", torch.float32)
        return self._models().AutoHQQHFModel.from_quantized(str(directory), compute_dtype=dtype, device="cpu")
