"""Declarative benchmark and evaluation harness for small language models."""

__version__ = "0.1.0"
