"""Task registry: suite ``type`` -> task class."""

from harness.tasks.base import Task
from harness.tasks.decoding import DecodingTask
from harness.tasks.kld import KldTask
from harness.tasks.perplexity import PerplexityTask
from harness.tasks.throughput import ThroughputTask
from harness.tasks.tokenization import TokenizationTask

TASKS: dict[str, type[Task]] = {cls.type_name: cls for cls in (PerplexityTask, KldTask, DecodingTask,
                                                                 ThroughputTask, TokenizationTask)}
