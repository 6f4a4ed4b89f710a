"""GPU memory figures up to the device boundary: NVML's per-process figure is unknown, never 0, when NVML
does not list this process."""

from __future__ import annotations

import os
from types import SimpleNamespace

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
