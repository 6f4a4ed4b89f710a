"""Backends: each module registers its class with ``@register_backend``; importing this package imports
them all, so :data:`BACKENDS` is complete. Heavy libraries are imported lazily inside each backend."""

from harness.backends import gpt4all, hf, llamacpp, ngram  # noqa: F401  (registration)
from harness.backends.registry import BACKENDS

__all__ = ["BACKENDS"]
