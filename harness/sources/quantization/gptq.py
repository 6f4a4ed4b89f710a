"""GPTQ: weights rounded a column at a time, each rounding error spread over the columns not yet rounded by the
inverse Hessian of the layer's inputs on the calibration windows (Frantar et al., 2022), through GPT-QModel.

Suite syntax: ``quantize: {method: gptq, bits: 4, group_size: 128, calibration: {dataset: NAME, samples: 128,
seq_len: 512}}``. The model is quantized in float32 and saved in the GPTQ checkpoint format (int32-packed
weights, float16 scales) that transformers' ``from_pretrained`` loads.
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


class GptqQuantize(QuantMethod):
    """``quantize: {method: gptq, bits, group_size, calibration: {dataset, samples, seq_len}}``."""

    produces: ClassVar = "hf"
    libraries: ClassVar = LIBRARIES
    extra: ClassVar = EXTRA
    modules: ClassVar = MODULES

    method: Literal["gptq"] = "gptq"
    bits: Literal[4] = Field(4, description="bits a weight (GPT-QModel 7.6's CPU kernel for 8 bits declares "
                             "float16/bfloat16 only)")
    group_size: GroupSize = Field(128, description="weights sharing a scale and zero point along a row")
    calibration: CalibrationSpec = Field(description="the suite dataset whose windows the Hessians are measured on")

    @property
    def label(self) -> str:
        """The method's settings, then its calibration."""
        return f"{super().label},{self.calibration}"

    def quantize(self, source_dir: Path, target: Path, calibration: Calibration | None, threads: int) -> None:
        """GPTQ on the calibration windows, in float32, saved in the GPTQ checkpoint format."""
        check_group_size(source_dir, self.group_size)
        quantize_with_gptqmodel(
            lambda gptqmodel: gptqmodel.GPTQConfig(bits=self.bits, group_size=self.group_size, lm_head=False,
                                                   offload_to_disk=False),
            source_dir, target, calibration, self.calibration, threads, dtype="float32")
