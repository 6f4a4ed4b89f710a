"""How long `harness dashboard` takes, and how much the site weighs, for 30 nights of suites/nightly.yaml
(every cell, synthetic figures from tests/runs.py: no model runs). The target: under 10 s on 2 cores and
under 10 MB.

    python benchmarks/dashboard_build.py [--nights 30] [--split]

--split writes each night as the nightly workflow does, one run directory per backend job.
Prints the wall time of the whole command (a fresh interpreter, as a user runs it), its CPU time (user +
system: the build is one thread, so on an idle machine the wall time is about this; on a shared one it is
the figure to trust) and the site's size.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from runs import suite_records, write_run  # noqa: E402


def write_nights(root: Path, nights: range, split: bool) -> int:
    """Synthetic nights of the nightly suite (gguf-cpu 30% slower from night 20 on, a new torch from night
    15 on); returns the number of run directories."""
    count = 0
    for night in nights:
        rng = np.random.default_rng(night)
        records = suite_records(REPO / "suites" / "nightly.yaml", rng)
        for r in records:
            if r["cell"]["backend"] == "gguf-cpu" and night >= 20:
                for m in r["measurements"]:
                    if m["metric"] in ("decode_tok_s", "prefill_tok_s"):
                        m["value"] *= 0.7
        groups = {}
        for r in records:
            groups.setdefault(r["cell"]["backend"] if split else "all", []).append(r)
        day = f"2026-10-{1 + night:02d}" if night < 31 else f"2026-11-{night - 30:02d}"
        env = {"cpu": "AMD EPYC 7763", "cpu_count": 2, "git_commit": f"{night:07x}abcdef", "python": "3.11.9",
               "libraries": {"torch": "2.13.0" if night >= 15 else "2.12.1", "numpy": "2.3.1"}}
        for i, (name, group) in enumerate(groups.items()):
            write_run(root / name / f"{day.replace('-', '')}-02{i:02d}00", group,
                      started_at=f"{day}T02:{i:02d}:00+00:00", environment=env)
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--split", action="store_true", help="one run directory per backend and night")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = write_nights(root / "results", range(args.nights), args.split)
        build(root, f"{args.nights} nights, {runs} run directories, from scratch")
        runs += write_nights(root / "results", range(args.nights, args.nights + 1), args.split)
        build(root, f"a night later ({runs} run directories; the earlier run pages kept)")


def build(root: Path, what: str) -> None:
    """Run `harness dashboard` on every run under root/results into root/site; print its time and size."""
    dirs = sorted(str(p) for p in (root / "results").iterdir())
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "dashboard", *dirs, "--out", str(root / "site")],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    files = [p for p in (root / "site").rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    print(f"{what}: {wall:.2f} s wall, {cpu:.2f} s CPU (whole command); {len(files)} files, "
          f"{size / 2**20:.2f} MiB ({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
