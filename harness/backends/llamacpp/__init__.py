from harness.backends.llamacpp.backend import LlamaCppBackend

__all__ = ["LlamaCppBackend"]
