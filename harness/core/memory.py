"""Peak memory of the cell's process: a sampler thread at >= 100 Hz plus the kernel's high-water mark."""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path

import psutil

#: the minimum docs/metrics.md promises; every wake-up takes a core from the work being measured (2 cores here)
SAMPLE_HZ = 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class PeakRSS:
    """Context manager: ``peak_mb`` is the highest resident set size seen while it was open.

    The sampler catches peaks inside C calls (the GIL is released there); the kernel's high-water mark of
    the process's memory (:func:`hwm_bytes`) bounds it from above.
    """

    def __init__(self, hz: float = SAMPLE_HZ):
        self._interval = 1.0 / hz
        self._process = psutil.Process()
        self._stop = threading.Event()
        self.sampled_peak = 0
        self.samples = 0

    def _rss(self) -> int:
        """Resident bytes: one pread of /proc/self/statm where there is one (a few µs), else psutil."""
        if self._statm is not None:
            return int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE
        return self._process.memory_info().rss

    def _run(self):
        while not self._stop.is_set():
            self.sampled_peak = max(self.sampled_peak, self._rss())
            self.samples += 1
            self._stop.wait(self._interval)

    def __enter__(self):
        try:
            self._statm = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._statm = None
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sampled_peak = max(self.sampled_peak, self._rss())
        if self._statm is not None:
            os.close(self._statm)

    @property
    def peak_mb(self) -> float:
        return max(self.sampled_peak, hwm_bytes()) / 2**20


def hwm_bytes() -> int:
    """The kernel's exact high-water mark of this process's resident memory since it exec'd: VmHWM where
    Linux has it. Not ru_maxrss: across fork and exec Linux keeps the parent's high-water mark in it (all
    of it where the child was vforked, as subprocess does), so a cell started by a driver that once held
    the probe's arrays would report them."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return ru_maxrss_bytes()


def ru_maxrss_bytes() -> int:
    """ru_maxrss is KiB on Linux, bytes on macOS."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def _memory_cgroup() -> tuple[Path, Path] | None:
    """This process's memory cgroup folder and the root of its hierarchy (cgroup v2, or v1's memory
    controller), None where there is none to read. Inside a container the path in /proc/self/cgroup may be
    the host's: then the root."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            root = Path("/sys/fs/cgroup")
        elif "memory" in controllers.split(","):
            root = Path("/sys/fs/cgroup/memory")
        else:
            continue
        for folder in (root / path.lstrip("/"), root):
            if (folder / "memory.events").is_file() or (folder / "memory.oom_control").is_file():
                return folder, root
    return None


def oom_kills() -> int | None:
    """How many processes of this process's memory cgroup the kernel's OOM killer has killed so far (read
    before and after a cell: a SIGKILL with the count up was the OOM killer's); None where unknown."""
    found = _memory_cgroup()
    if found is None:
        return None
    for name in ("memory.events", "memory.oom_control"):
        try:
            for line in (found[0] / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


def memory_limit_bytes() -> int | None:
    """The tightest memory limit of this process's cgroup and its ancestors (v2 memory.max, v1
    memory.limit_in_bytes); None where there is none or it cannot be read."""
    found, limits = _memory_cgroup(), []
    if found is None:
        return None
    folder, root = found
    for level in [folder, *folder.parents]:
        for name in ("memory.max", "memory.limit_in_bytes"):
            try:
                text = (level / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2**62:  # v1 says "no limit" with a number near 2**63
                limits.append(int(text))
        if level == root:
            break
    return min(limits, default=None)


def out_of_memory_reason(kills_before: int | None) -> str | None:
    """A SIGKILLed cell's reason when the OOM killer's count rose since ``kills_before``, else None."""
    after = oom_kills()
    if kills_before is None or after is None or after <= kills_before:
        return None
    limit = memory_limit_bytes()
    return "killed: out of memory" + (f" (limit {limit / 2**20:.0f} MiB)" if limit else " (the kernel's OOM killer)")


def out_of_memory_cause(exc: BaseException) -> str | None:
    """What ran out when ``exc`` is the process running out of memory (an address-space limit, ``ulimit -v``,
    shows as any of these, depending on what asked for it), else None."""
    if isinstance(exc, MemoryError):
        return "MemoryError"
    if isinstance(exc, ImportError) and "failed to map segment" in str(exc):  # the loader's words
        return f"cannot map the library of {exc.name}"
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return "cannot start a thread"
    return None


def out_of_memory_line(cause: str = "MemoryError") -> str:
    """What running out of memory says in one line, with the address-space limit (``ulimit -v``) where one is
    set: the usual cause, and not the machine's memory."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    limit = "" if soft == resource.RLIM_INFINITY else f"; the address-space limit (ulimit -v) is {soft / 2**20:.0f} MiB"
    return f"out of memory ({cause}{limit})"


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


class CudaMemory:
    """Peak GPU memory of this process: torch's allocator high-water marks since construction, and
    NVML's per-process figure (what nvidia-smi shows: allocator reserve plus the CUDA context). NVML is
    read when asked, after the work; the caching allocator keeps what it reserved, so that is its peak."""

    def __init__(self):
        import torch

        self._torch = torch
        torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> dict[str, float | None]:
        """``nvml_process_mb`` is None (recorded as null: unknown) where NVML gives no figure for this process."""
        cuda = self._torch.cuda
        nvml = nvml_process_bytes()
        return {"peak_vram_mb": cuda.max_memory_reserved() / 2**20,
                "torch_max_allocated_mb": cuda.max_memory_allocated() / 2**20,
                "torch_max_reserved_mb": cuda.max_memory_reserved() / 2**20,
                "nvml_process_mb": None if nvml is None else nvml / 2**20}


#: NVML_VALUE_NOT_AVAILABLE of an unsigned long long: the driver does not report the figure
NVML_NOT_AVAILABLE = 2**64 - 1


def nvml_process_bytes() -> int | None:
    """GPU memory NVML attributes to this process over all devices; None when unknown (no pynvml or driver,
    or see :func:`own_process_bytes`)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        devices = [pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
                   for i in range(pynvml.nvmlDeviceGetCount())]
        return own_process_bytes(devices, os.getpid())
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def own_process_bytes(devices: list[list], pid: int) -> int | None:
    """The bytes of ``pid`` in NVML's compute-process lists, one list per device (entries with ``pid`` and
    ``usedGpuMemory``). None, never 0, when NVML lists the process on no device (in a container NVML may see
    only the host's process ids) or gives no figure for an entry of it (None, NVML_VALUE_NOT_AVAILABLE, or
    0, which no process holding a CUDA context uses)."""
    used = [p.usedGpuMemory for processes in devices for p in processes if p.pid == pid]
    if not used or any(not u or u >= NVML_NOT_AVAILABLE for u in used):
        return None
    return sum(used)
