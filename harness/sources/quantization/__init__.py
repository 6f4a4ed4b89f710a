"""Quantization methods under a model's ``quantize:`` key, one module each (:mod:`.method` is their base and
registry); importing the package registers them all."""

from harness.sources.quantization import awq, gguf, gptq, hqq, quanto, torchao  # noqa: F401  (registers the methods)
from harness.sources.quantization.method import Calibration, QuantMethod, parse_quantize

__all__ = ["Calibration", "QuantMethod", "parse_quantize"]
