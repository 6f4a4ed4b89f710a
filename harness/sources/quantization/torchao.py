"""torchao's weight quantization through transformers' ``TorchAoConfig`` (``quantize: {method: torchao, ...}``).

Schemes that run on a CPU with torchao 0.18: ``int8_weight_only`` (int8 weights, per row or per group),
``int8_dynamic`` (int8 weights and activations quantized per token at run time) and ``intx_int4`` (4-bit
weights by ``IntxWeightOnlyConfig``, per group, stored unpacked in int8: no smaller on disk or in memory than
int8; its bytes are reported as they are). ``Int4WeightOnlyConfig`` needs CUDA (or another package) and is not
offered. The quantized tensors save as safetensors and load back with transformers' ``from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, model_validator

from harness.core.errors import require
from harness.sources.quantization.method import KEEP_UNQUANTIZED, Calibration, QuantMethod


class TorchaoQuantize(QuantMethod):
    """``{method: torchao, scheme: int8_weight_only | int8_dynamic | intx_int4, group_size: N}``."""

    produces: ClassVar = "hf"
    libraries: ClassVar = ("torchao",)
    extra: ClassVar = "hfquant"
    modules: ClassVar = ("torchao",)

    method: Literal["torchao"] = "torchao"
    scheme: Literal["int8_weight_only", "int8_dynamic", "intx_int4"]
    group_size: int | None = Field(None, ge=16, description="weights per scale along a row; default: one scale per "
                                   "row (int8_weight_only), 32 (intx_int4); int8_dynamic: per row only")

    @model_validator(mode="after")
    def _grouping(self):
        if self.scheme == "int8_dynamic" and self.group_size is not None:
            raise ValueError("group_size: int8_dynamic scales per row only")
        if self.scheme == "intx_int4" and self.group_size is None:
            self.group_size = 32
        return self

    def config(self):
        """The torchao config of this scheme."""
        torchao = require("torchao.quantization", self.extra, "quantize: {method: torchao}")
        from torchao.quantization.granularity import PerGroup

        if self.scheme == "int8_weight_only":  # per row unless grouped (torchao 0.18 takes the group as granularity)
            if self.group_size is None:
                return torchao.Int8WeightOnlyConfig()
            return torchao.Int8WeightOnlyConfig(granularity=PerGroup(self.group_size))
        if self.scheme == "int8_dynamic":
            return torchao.Int8DynamicActivationInt8WeightConfig()
        import torch

        return torchao.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(self.group_size))

    def quantized_model(self, source_dir: Path, calibration: Calibration | None, threads: int):
        import torch
        from transformers import AutoModelForCausalLM, TorchAoConfig

        settings = TorchAoConfig(quant_type=self.config(), modules_to_not_convert=list(KEEP_UNQUANTIZED))
        return AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32, quantization_config=settings)
