"""The bridge to lm-evaluation-harness (the ``lmeval`` extra). Importing this package registers the model
``harness`` with lm-eval, so that ``lm_eval.simple_evaluate(model="harness", model_args="backend=...,gguf=...")``
and ``lm-eval --model harness`` run any harness backend (``harness lm-eval ...`` imports it for you). It is not
imported by ``import harness``: lm-eval's import costs seconds that every other command would pay."""

from harness.lmeval.model import HarnessLM

__all__ = ["HarnessLM"]
