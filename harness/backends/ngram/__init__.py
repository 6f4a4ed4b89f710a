from harness.backends.ngram.backend import NgramBackend

__all__ = ["NgramBackend"]
