"""optimum-quanto's weight quantization (``quantize: {method: quanto, weights: int8 | int4 | int2 | float8}``).

transformers 5.25 quantizes through ``QuantoConfig`` but refuses to save the result ("not serializable"), so
the model is quantized, saved and loaded with quanto's own ``QuantizedModelForCausalLM`` (safetensors and a
``quanto_qmap.json``); the hf backend gets the transformers model it wraps. Weights only: quanto quantizes
activations only through its own calibration pass, which is not offered.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from harness.core.errors import require
from harness.sources.quantization.method import KEEP_UNQUANTIZED, Calibration, QuantMethod


class QuantoQuantize(QuantMethod):
    """``{method: quanto, weights: int8 | int4 | int2 | float8}``."""

    produces: ClassVar = "hf"
    libraries: ClassVar = ("optimum-quanto",)
    extra: ClassVar = "hfquant"
    modules: ClassVar = ("optimum.quanto",)

    method: Literal["quanto"] = "quanto"
    weights: Literal["int8", "int4", "int2", "float8"]

    def _quanto(self):
        return require("optimum.quanto", self.extra, "quantize: {method: quanto}")

    def quantized_model(self, source_dir: Path, calibration: Calibration | None, threads: int):
        """quanto's wrapper of the quantized transformers model (it saves itself; calling it runs the model)."""
        import torch
        from transformers import AutoModelForCausalLM

        quanto = self._quanto()
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=torch.float32)
        weights = getattr(quanto, f"q{self.weights}")
        # quanto quantizes nn.Linear only: the embedding stays as it is; the output head is excluded by name
        return quanto.QuantizedModelForCausalLM.quantize(model, weights=weights,
                                                         exclude=[m for m in KEEP_UNQUANTIZED if m != "embed_tokens"])

    def load(self, directory: Path, kwargs: dict):
        """quanto's loader (float32 on the CPU, as saved); the transformers model inside its wrapper, its quantized
        layers run outside ``torch.inference_mode`` (which the hf backend scores in): quanto's packed int4/int2
        weights fail there ("Cannot set version_counter for inference tensor", optimum-quanto 0.2.7)."""
        quanto = self._quanto()
        model = quanto.QuantizedModelForCausalLM.from_pretrained(directory)._wrapped
        for module in model.modules():
            if isinstance(module, quanto.nn.QModuleMixin):
                module.forward = _without_inference_mode(module.forward)
        return model


def _without_inference_mode(forward):
    import torch

    def run(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return forward(*args, **kwargs)

    return run
