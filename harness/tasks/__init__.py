"""Tasks: each module registers its class with ``@register_task``; importing this package imports them
all, so :data:`TASKS` is complete."""

from harness.tasks import decoding, kld, lmeval, perplexity, throughput, tokenization  # noqa: F401  (registration)
from harness.tasks.registry import TASKS

__all__ = ["TASKS"]
