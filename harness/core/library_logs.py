"""Warnings libraries log on import that a harness user can neither act on nor silence, kept off the terminal
(and out of the cells' logs, where they would bury the lines that matter).

With the ``hfquant`` extra installed, transformers imports torchao whenever it builds a model (the driver does, to
count a model's weights): torchao 0.18 then logs "Failed to load ..." for the CUDA and Python 3.10 extensions its
CPU wheel ships, and torch 2.13 logs that torchao registers Enums the deprecated way. Errors still show.
"""

from __future__ import annotations

import logging

QUIET = ("torchao", "torch.utils._pytree")


def quiet_library_logs() -> None:
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
