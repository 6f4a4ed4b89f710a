"""GPU memory figures up to the device boundary: NVML's per-process figure is unknown, never 0, when NVML
does not list this process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.core.memory import NVML_NOT_AVAILABLE, nvml_process_bytes, own_process_bytes

MiB = 2**20


def _process(pid: int, used: int | None) -> SimpleNamespace:
    """An entry as pynvml's nvmlDeviceGetComputeRunningProcesses returns it (pid, usedGpuMemory)."""
    return SimpleNamespace(pid=pid, usedGpuMemory=used)


def test_own_process_bytes_sums_this_process_over_devices():
    devices = [[_process(7, 300 * MiB), _process(42, 500 * MiB)], [], [_process(42, 20 * MiB)]]
    assert own_process_bytes(devices, 42) == 520 * MiB


def test_a_process_nvml_does_not_list_is_unknown_not_zero():
    """In a container NVML may list the host's process ids only: this process is on no list."""
    assert own_process_bytes([[_process(7, 300 * MiB)], []], 42) is None
    assert own_process_bytes([], 42) is None


def test_an_entry_without_a_figure_is_unknown():
    for used in (None, NVML_NOT_AVAILABLE, 0):
        assert own_process_bytes([[_process(42, 300 * MiB)], [_process(42, used)]], 42) is None


def test_without_a_gpu_nvml_gives_no_figure():
    """Here (no driver, or no pynvml) the reading is None: CudaMemory records it as null, not 0 MiB."""
    assert nvml_process_bytes() is None or os.path.exists("/dev/nvidia0")


def test_a_cells_peak_rss_is_its_own_not_its_parents():
    """Linux carries a parent's high-water mark into a subprocess's ru_maxrss across fork and exec: a cell
    started by a driver that once held 400 MiB must still report only its own memory."""
    if not Path("/proc/self/status").exists():
        pytest.skip("VmHWM is Linux's")
    ballast = bytearray(400 * 2**20)  # resident: bytearray zero-fills its pages
    code = ("from harness.core.memory import PeakRSS, ru_maxrss_bytes\n"
            "with PeakRSS() as m:\n    pass\n"
            "print(m.peak_mb, ru_maxrss_bytes() / 2**20)")
    peak, ru_maxrss = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                check=True).stdout.split())
    assert len(ballast) and ru_maxrss > 400  # the kernel's figure includes the parent's
    assert peak < 200  # a Python with psutil: tens of MiB
