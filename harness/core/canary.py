"""The machine canary: a fixed, tiny CPU kernel timed at the start of each interleaved round, at the cell's
thread count (one thread cannot see a neighbour on the other core). It does not depend on the code under
test, so a round whose canary ran much slower than the run's median ran on a slower machine, and a night
whose canary drifted tells a whole-machine slowdown from a code regression.

The kernel is SHA-256 over a fixed buffer in each thread: hashlib releases the GIL on large buffers, so the
threads run in parallel, and it uses no BLAS whose own threads would change its meaning.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import threading
import time

#: each thread hashes PASSES times a BLOCK-byte buffer (8 MiB: ~5-20 ms on one core)
BLOCK, PASSES = 1 << 20, 8
#: the kernel runs this many times; its best time is the figure (a lone scheduler tick does not move it, a
#: neighbour sharing a core does)
TRIES = 3


def _once(threads: int, block: bytes) -> float:
    def work() -> None:
        for _ in range(PASSES):
            hashlib.sha256(block).digest()

    workers = [threading.Thread(target=work) for _ in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - start


def canary(threads: int) -> float:
    """Seconds the kernel takes with ``threads`` threads (best of TRIES)."""
    block = bytes(BLOCK)
    return min(_once(max(threads, 1), block) for _ in range(TRIES))


def slow_rounds(times: list[float | None], median: float, slowdown: float) -> list[int]:
    """The rounds whose canary ran more than ``slowdown`` times the median."""
    return [i for i, t in enumerate(times) if t is not None and t > slowdown * median]


def median(times: list[float | None]) -> float | None:
    known = [t for t in times if t is not None]
    return statistics.median(known) if known else None


def of_run(params: str) -> float | None:
    """The run's median canary time at an interleaved cell's thread count, from the cell's results ``params``
    (JSON); None for a cell that ran no rounds. Across nights it is the machine's own speed."""
    return ((json.loads(params).get("resolved") or {}).get("contention") or {}).get("canary_median_s")
