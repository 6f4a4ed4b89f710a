"""Calls to the Hugging Face hub (models and datasets), quiet: offline, the hub client logs every retry
(eleven lines, over about 25 s of backoff) before giving up, and the harness's own one-line error says all
that matters."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_hub() -> Iterator[None]:
    """No log record below ERROR while inside. Process-wide (``logging.disable``): the hub client resets
    its own loggers' levels when it first logs, so setting them beforehand does not hold."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)
