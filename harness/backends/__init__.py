"""Backend registry: suite ``type`` -> backend class. Modules import their heavy libraries lazily."""

from harness.backends.base import Backend
from harness.backends.gpt4all import Gpt4AllBackend
from harness.backends.hf import HfBackend
from harness.backends.llamacpp import LlamaCppBackend
from harness.backends.ngram import NgramBackend

BACKENDS: dict[str, type[Backend]] = {
    cls.type_name: cls for cls in (LlamaCppBackend, HfBackend, Gpt4AllBackend, NgramBackend)}
