"""The machine and software a run ran on, captured once per run into ``run.json`` (``environment``)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from harness import __version__

#: the checkout the harness runs from (its commit is recorded)
HARNESS_CHECKOUT = Path(__file__).resolve().parent.parent


def git_commit(checkout: Path = HARNESS_CHECKOUT) -> str | None:
    """The harness checkout's commit, ``-dirty`` if tracked files changed; read without the index refresh
    ``git status`` otherwise writes (``.git/index.lock``): a run writes nothing into the checkout, nor races
    the user's own git."""
    git = ["git", "--no-optional-locks", "-C", str(checkout)]
    try:
        out = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


LIBRARIES = ("numpy", "pandas", "pyarrow", "scipy", "pydantic", "llama-cpp-python", "torch", "transformers",
             "accelerate", "bitsandbytes", "gpt4all", "datasets")


def environment() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import psutil

    return {
        "harness_version": __version__, "git_commit": git_commit(), "python": sys.version.split()[0],
        "platform": platform.platform(), "libraries": versions, "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": _gpu(),
    }


def machine() -> dict:
    """Where a cell ran, for its record (``resolved.where``): compare notes a change of hardware."""
    return {"hostname": socket.gethostname(), "cpu": _cpu_model(), "gpu": _gpu(visible_only=True)}


def _gpu(visible_only: bool = False) -> list[str]:
    """The machine's NVIDIA GPUs, or those ``CUDA_VISIBLE_DEVICES`` leaves this process (a cluster
    scheduler gives a cell its own)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    rows = [[part.strip() for part in line.split(",")] for line in out.stdout.splitlines() if line.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible_only and visible is not None:
        wanted = {v.strip() for v in visible.split(",") if v.strip()}
        rows = [r for r in rows if r[0] in wanted or r[1] in wanted]
    return [", ".join(r[2:]) for r in rows]
