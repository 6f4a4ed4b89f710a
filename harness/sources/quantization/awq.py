"""AWQ: each weight column scaled up by how large its input activations are on the calibration windows (the
scale searched to minimise the layer's output error) before rounding, and the inputs scaled down to match
(Lin et al., 2023), through GPT-QModel.

Suite syntax: ``quantize: {method: awq, bits: 4, group_size: 128, calibration: {dataset: NAME, samples: 128,
seq_len: 512}}``. On a CPU GPT-QModel 7.6 quantizes AWQ only with its ``AWQ_TORCH`` kernel, which takes float16
or bfloat16 weights: the model is quantized in bfloat16 and saved in the AWQ GEMM checkpoint format that
transformers' ``from_pretrained`` loads (in float32 too).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from harness.sources.quantization.gptqmodel_run import (
    EXTRA,
    LIBRARIES,
    MODULES,
    CalibrationSpec,
    GroupSize,
    check_group_size,
    quantize_with_gptqmodel,
)
from harness.sources.quantization.method import Calibration, QuantMethod


class AwqQuantize(QuantMethod):
    """``quantize: {method: awq, bits, group_size, calibration: {dataset, samples, seq_len}}``."""

    produces: ClassVar = "hf"
    libraries: ClassVar = LIBRARIES
    extra: ClassVar = EXTRA
    modules: ClassVar = MODULES

    method: Literal["awq"] = "awq"
    bits: Literal[4] = Field(4, description="bits a weight (AWQ's GEMM format packs 4)")
    group_size: GroupSize = Field(128, description="weights sharing a scale and zero point along a row")
    calibration: CalibrationSpec = Field(description="the suite dataset whose activations choose the scales")

    @property
    def label(self) -> str:
        """The method's settings, then its calibration."""
        return f"{super().label},{self.calibration}"

    def quantize(self, source_dir: Path, target: Path, calibration: Calibration | None, threads: int) -> None:
        """AWQ on the calibration windows, in bfloat16 (the CPU kernel's), saved in the AWQ GEMM format."""
        check_group_size(source_dir, self.group_size)
        quantize_with_gptqmodel(
            lambda gptqmodel: gptqmodel.AWQConfig(bits=self.bits, group_size=self.group_size, lm_head=False,
                                                  offload_to_disk=False),
            source_dir, target, calibration, self.calibration, threads, dtype="bfloat16", backend="AWQ_TORCH")
