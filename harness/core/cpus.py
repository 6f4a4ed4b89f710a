"""How many CPUs this process may use: its affinity mask (a container's or ``taskset``'s limit), not the
machine's count. A backend's default thread count, and the machine probe's."""

from __future__ import annotations

import os


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
