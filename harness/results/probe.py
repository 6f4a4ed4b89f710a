"""The machine's ceilings: sustained memory read bandwidth and dense matrix throughput (GEMM) per dtype.

Throughput cells divide what they achieved by these (MBU, MFU). The probe runs once per run and is cached
for a day per host, thread count and library versions (``harness probe`` reruns it): a cache entry
(:mod:`harness.sources.cache_entry`), so runs started together measure once, not over each other.

Bandwidth kernel: ``np.bitwise_or.reduce`` over a uint64 array far larger than the last-level cache, one
slice per thread (numpy releases the GIL in reductions), best of ``repeats`` passes. It reads each byte
once and writes nothing, like a decode step reading weights; in cache the same kernel runs ~10x faster
than from memory, so out of cache it is bound by memory, not by the ALU: a fair ceiling. GEMM: square
n×n matmuls, 2·n³ FLOPs each, best of ``repeats``, with numpy (fp32) and torch (fp32, bf16) on CPU and
torch (fp32, bf16, fp16) on CUDA where present; a dtype's ceiling is the best library's.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

import numpy as np

from harness.core.files import read_json_object
from harness.sources.cache import cache_dir
from harness.sources.cache_entry import Stale, cached

#: a cached probe older than this is measured again
MAX_AGE_S = 86400
#: the arrays read are at least this many times the last-level cache
LLC_MULTIPLE = 8
MIN_BYTES, MAX_BYTES = 512 * 2**20, 2 * 2**30
GEMM_N = 1024
#: best of this many: on a shared machine the best pass is the one least disturbed
REPEATS = 10
Timer = Callable[[], float]


def llc_bytes() -> int | None:
    """The largest CPU cache's size (Linux sysfs), None where unknown."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def array_bytes() -> int:
    llc = llc_bytes() or 32 * 2**20
    return int(min(max(LLC_MULTIPLE * llc, MIN_BYTES), MAX_BYTES))


def _best(fn: Callable[[], object], repeats: int, timer: Timer) -> float:
    """Shortest of ``repeats`` timed calls, after one untimed (page faults, thread start-up)."""
    fn()
    times = []
    for _ in range(repeats):
        start = timer()
        fn()
        times.append(timer() - start)
    return min(times)


def memory_read(threads: int, nbytes: int, repeats: int = REPEATS, timer: Timer = time.perf_counter) -> dict:
    """Read bandwidth (GB/s, 1e9 bytes) of ``threads`` threads reading ``nbytes`` once per pass."""
    data = np.arange(nbytes // 8, dtype=np.uint64)  # distinct pages: nothing a hypervisor could merge
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        best = _best(lambda: list(pool.map(np.bitwise_or.reduce, parts)), repeats, timer)
    return {"gb_s": data.nbytes / best / 1e9, "threads": threads, "bytes": int(data.nbytes), "repeats": repeats,
            "method": "numpy bitwise_or.reduce over uint64, one slice per thread, best pass"}


def _gemm_result(library: str, dtype: str, n: int, seconds: float, repeats: int) -> dict:
    return {"library": library, "dtype": dtype, "n": n, "repeats": repeats, "flop_s": 2 * n**3 / seconds}


def gemm_numpy(n: int, repeats: int, timer: Timer) -> dict:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    return _gemm_result("numpy", "fp32", n, _best(lambda: a @ a, repeats, timer), repeats)


TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
#: torch's CPU fp16 matmul is a slow fallback no CPU cell uses
CPU_DTYPES = ("fp32", "bf16")


def gemm_torch(torch, device: str, dtype: str, n: int, repeats: int, timer: Timer) -> dict:
    a = torch.randn(n, n, device=device).to(getattr(torch, TORCH_DTYPES[dtype]))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def matmul():
        a @ a
        sync()
    return _gemm_result(f"torch {device}", dtype, n, _best(matmul, repeats, timer), repeats)


def cuda_read(torch, nbytes: int, repeats: int, timer: Timer) -> dict:
    """The GPU's read bandwidth: a max-reduction over a large device tensor."""
    data = torch.ones(nbytes // 4, device="cuda")

    def read():
        data.max()
        torch.cuda.synchronize()
    best = _best(read, repeats, timer)
    return {"gb_s": data.numel() * 4 / best / 1e9, "bytes": data.numel() * 4, "repeats": repeats,
            "method": "torch max over a float32 cuda tensor, best pass"}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def measure(threads: int, nbytes: int | None = None, gemm_n: int = GEMM_N, repeats: int = REPEATS,
            timer: Timer = time.perf_counter) -> dict:
    """Every ceiling of this machine with ``threads`` CPU threads (sizes shrink for tests)."""
    nbytes = nbytes or array_bytes()
    torch = _torch()
    gemms = []
    if torch is not None:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            gemms += [gemm_torch(torch, "cpu", d, gemm_n, repeats, timer) for d in CPU_DTYPES]
        finally:
            torch.set_num_threads(before)
    gemms.append(gemm_numpy(gemm_n, repeats, timer))
    cpu = {"memory_read": memory_read(threads, nbytes, repeats, timer), "gemm": gemms,
           "gemm_flop_s": _best_per_dtype(gemms), "llc_bytes": llc_bytes()}
    out = {"cpu": cpu, "threads": threads}
    if torch is not None and torch.cuda.is_available():
        cuda_gemms = [gemm_torch(torch, "cuda", d, 4 * gemm_n, repeats, timer) for d in TORCH_DTYPES]
        out["cuda"] = {"device": torch.cuda.get_device_name(), "memory_read": cuda_read(torch, nbytes, repeats, timer),
                       "gemm": cuda_gemms, "gemm_flop_s": _best_per_dtype(cuda_gemms)}
    return out


def _best_per_dtype(gemms: list[dict]) -> dict[str, float]:
    best: dict[str, float] = {}
    for g in gemms:
        best[g["dtype"]] = max(best.get(g["dtype"], 0.0), g["flop_s"])
    return best


def cache_key(threads: int) -> dict:
    """What a probe's figures depend on: the host, its CPU, the thread count, the libraries doing the work."""
    versions = {}
    for name in ("numpy", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "threads": threads,
            "libraries": versions}


def _cache_path(key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "probes" / f"{digest}.json"


def probe(threads: int, rerun: bool = False, now: Timer = time.time, **sizes) -> dict:
    """The cached probe for this host and thread count if younger than a day (and not ``rerun``), else a
    fresh one, cached. ``cached`` says which; ``measured_at`` is when it ran (epoch seconds)."""
    key = cache_key(threads)

    def build(tmp: Path) -> None:
        start = time.perf_counter()
        result = {"key": key, "measured_at": now(), **measure(threads, **sizes)}
        tmp.write_text(json.dumps({**result, "probe_s": time.perf_counter() - start}, indent=1), encoding="utf-8")

    def check(path: Path) -> dict:
        stored = read_json_object(path, "a machine probe")
        if stored.get("key") != key or now() - stored["measured_at"] >= MAX_AGE_S:
            raise Stale
        return stored

    entry = cached(_cache_path(key), build, check, refresh=rerun)
    return {**entry.value, "cached": entry.build_s is None}


def ceilings(machine: dict | None, device: str, dtype: str) -> tuple[float | None, float | None]:
    """(read bytes/s, FLOP/s) of ``device`` ("cpu" or "cuda") for ``dtype`` from a probe, None if absent."""
    part = (machine or {}).get(device)
    if not part:
        return None, None
    flops = part["gemm_flop_s"].get(dtype)
    return part["memory_read"]["gb_s"] * 1e9, flops


def probe_line(result: dict) -> str:
    """One line of a probe's figures: read GB/s and GEMM GFLOP/s per dtype, per device."""
    parts = []
    for device in ("cpu", "cuda"):
        if device in result:
            part = result[device]
            gemm = ", ".join(f"{d} {f / 1e9:,.0f}" for d, f in part["gemm_flop_s"].items())
            parts.append(f"{device}: read {part['memory_read']['gb_s']:.1f} GB/s, GEMM GFLOP/s {gemm}")
    return "; ".join(parts)
