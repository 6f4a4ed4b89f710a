"""Quantization methods under a model's ``quantize:`` key, one module each (:mod:`.method` is their base and
registry); importing the package registers them all."""

from typing import Union

from harness.sources.quantization import awq, gguf, gptq, hqq, quanto, torchao  # noqa: F401  (registers the methods)
from harness.sources.quantization.method import Calibration, QuantMethod, parse_quantize

#: the settings of every registered method, one of which a ``quantize:`` mapping is: the suite schema shows each
#: method's keys, and a value serializes as its own method
QuantMethodSettings = Union[tuple(QuantMethod.registry[name] for name in sorted(QuantMethod.registry))]  # noqa: UP007

__all__ = ["Calibration", "QuantMethod", "QuantMethodSettings", "parse_quantize"]
