"""Tasks: each module registers its class with ``@register_task`` and its metrics' records with
:func:`harness.core.metrics.register`; importing this package imports them all, so :data:`TASKS` and
:data:`METRICS` are complete."""

from harness.core.metrics import METRICS
from harness.tasks import decoding, kld, lmeval, perplexity, throughput, tokenization  # noqa: F401  (registration)
from harness.tasks.registry import TASKS

__all__ = ["METRICS", "TASKS"]
