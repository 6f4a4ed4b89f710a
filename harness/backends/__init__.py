"""Backend registry: suite ``type`` -> backend class. Modules import their heavy libraries lazily."""

from harness.backends.base import Backend
from harness.backends.llamacpp import LlamaCppBackend

BACKENDS: dict[str, type[Backend]] = {cls.type_name: cls for cls in (LlamaCppBackend,)}
