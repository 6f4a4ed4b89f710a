from harness.backends.hf.backend import HfBackend

__all__ = ["HfBackend"]
