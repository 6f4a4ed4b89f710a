"""GPTQ: weights rounded a column at a time, each rounding error spread over the columns not yet rounded by the
inverse Hessian of the layer's inputs on the calibration windows (Frantar et al., 2022), through GPT-QModel.

Suite syntax: ``quantize: {method: gptq, bits: 4, group_size: 128, calibration: {dataset: NAME, samples: 128,
seq_len: 512}}``. The model is quantized in float32 and saved in the GPTQ checkpoint format (int32-packed
weights, float16 scales) that transformers' ``from_pretrained`` loads.
"""

from __future__ import annotations

from typing import Literal

from harness.sources.quantization.gptqmodel_run import GptqModelMethod


class GptqQuantize(GptqModelMethod):
    """``quantize: {method: gptq, bits, group_size, calibration: {dataset, samples, seq_len}}``."""

    method: Literal["gptq"] = "gptq"

    def config(self, gptqmodel):
        return gptqmodel.GPTQConfig(bits=self.bits, group_size=self.group_size, lm_head=False, offload_to_disk=False)
