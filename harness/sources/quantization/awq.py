"""AWQ: each weight column scaled up by how large its input activations are on the calibration windows (the
scale searched to minimise the layer's output error) before rounding, and the inputs scaled down to match
(Lin et al., 2023), through GPT-QModel.

Suite syntax: ``quantize: {method: awq, bits: 4, group_size: 128, calibration: {dataset: NAME, samples: 128,
seq_len: 512}}``. On a CPU GPT-QModel 7.6 quantizes AWQ only with its ``AWQ_TORCH`` kernel, which takes float16
or bfloat16 weights: the model is quantized in bfloat16 and saved in the AWQ GEMM checkpoint format that
transformers' ``from_pretrained`` loads (in float32 too).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from harness.sources.quantization.gptqmodel_run import GptqModelMethod


class AwqQuantize(GptqModelMethod):
    """``quantize: {method: awq, bits, group_size, calibration: {dataset, samples, seq_len}}``."""

    dtype: ClassVar = "bfloat16"
    kernel: ClassVar = "AWQ_TORCH"
    method: Literal["awq"] = "awq"

    def config(self, gptqmodel):
        return gptqmodel.AWQConfig(bits=self.bits, group_size=self.group_size, lm_head=False, offload_to_disk=False)
