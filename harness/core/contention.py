"""How busy the machine was while a cell was timed: cumulative counters read at the start and at the end of
the timed section, their deltas, and the verdict (``quiet``, or ``busy`` with the reason).

Counters, each optional (a container without ``/proc/pressure``, a kernel without schedstat, a VM without
cpufreq): one that cannot be read is listed under ``not_measured`` with the reason, and the verdict rests on
the others.

- ``/proc/stat``: busy and steal time of the cores the cell may run on (``sched_getaffinity``); less the
  cell's own CPU time (``/proc/PID/stat``), what other processes used of them;
- ``/proc/PID/task/*/schedstat``: how long the cell's runnable threads waited for a CPU (run-queue wait);
- ``/proc/PID/task/*/status``: involuntary context switches of the cell's threads;
- ``/proc/pressure/cpu``: the share of the time some task was stalled waiting for a CPU (machine-wide);
- cgroup v2 ``cpu.stat``: time the cell's cgroup was throttled by its CPU quota (the usual cause on CI);
- ``/sys/devices/system/cpu/cpuN/cpufreq/scaling_cur_freq``: the clock of the cell's cores.

No sampling thread: on two cores it would itself take CPU from the cell. A section is read twice, which costs
well under a millisecond.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from harness.core.settings import StrictModel

QUIET, BUSY = "quiet", "busy"
#: clock ticks per second of /proc/stat and /proc/PID/stat (USER_HZ)
TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class BusySettings(StrictModel):
    """When a timing counts as measured on a busy machine (suite key ``busy:``; a run-level key, no cell id
    moves). Defaults: an idle machine's background (the harness's own progress bar, kernel threads) stays
    below a tenth of the thresholds; ``benchmarks/busy_machine.py`` measures both sides."""

    other_cores: float = Field(0.25, ge=0, le=1, description="busy when other processes used more than this "
                               "share of the cell's cores (0.25 of 2 cores: half a core)")
    run_queue_wait: float = Field(0.10, ge=0, le=1, description="busy when the cell's runnable threads waited "
                                  "for a CPU more than this share of their time (judged only when its threads "
                                  "fit its cores: more threads than cores wait on each other)")
    throttled: float = Field(0.05, ge=0, le=1, description="busy when the cgroup's CPU quota throttled the cell "
                             "more than this share of its time")
    steal: float = Field(0.05, ge=0, le=1, description="busy when the hypervisor stole more than this share of "
                         "the cell's cores")
    canary_slowdown: float = Field(1.15, gt=1, description="an interleaved round is busy when the machine canary "
                                   "at its start ran this much slower than the run's median")
    min_quiet_rounds: int = Field(5, ge=1, description="an interleaved cell is busy when fewer quiet rounds than "
                                  "this (or than it has) remain once its busy rounds are left out")
    wait_quiet_s: float = Field(0.0, ge=0, description="before each timing cell and interleaved round, wait up "
                                "to this many seconds for the machine to be quiet (--wait-quiet wins)")
    quiet_window_s: float = Field(3.0, gt=0, description="--wait-quiet: how long the machine must stay quiet")


@dataclass
class Sample:
    """The counters at one moment; ``missing`` names each counter that could not be read, and why."""

    wall: float
    cores: list[int]
    core_ticks: dict[int, tuple[int, int]] = field(default_factory=dict)  # core -> (busy, steal)
    own_ticks: int | None = None
    threads: dict[str, tuple[int, int]] = field(default_factory=dict)  # tid -> (run ns, wait ns)
    involuntary: int | None = None
    pressure_us: int | None = None
    throttled_us: int | None = None
    mhz: float | None = None
    missing: dict[str, str] = field(default_factory=dict)


def _why(exc: Exception, path: Path) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{path} does not exist"
    if isinstance(exc, PermissionError):
        return f"{path}: permission denied"
    return f"{path}: unreadable ({type(exc).__name__})"


def _core_ticks(text: str, cores: list[int]) -> dict[int, tuple[int, int]]:
    """(busy, steal) ticks of each core: user, nice, system, irq and softirq (guest time is inside user)."""
    out = {}
    for line in text.splitlines():
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
            v = [int(x) for x in values] + [0] * 8
            out[int(name[3:])] = (v[0] + v[1] + v[2] + v[5] + v[6], v[7])
    return out


def _cgroup_dir(proc: Path, pid: int, sys_root: Path) -> Path:
    """The cell's cgroup v2 folder (``0::/PATH`` in /proc/PID/cgroup), else the root's."""
    for line in (proc / str(pid) / "cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return sys_root / "fs" / "cgroup" / line[3:].lstrip("/")
    return sys_root / "fs" / "cgroup"


def read(pid: int | None = None, cores: list[int] | None = None, proc: Path = Path("/proc"),
         sys_root: Path = Path("/sys")) -> Sample:
    """The counters now, for process ``pid`` (default: this one) on ``cores`` (default: its affinity)."""
    pid = os.getpid() if pid is None else pid
    cores = sorted(os.sched_getaffinity(pid) if cores is None else cores)
    sample = Sample(time.monotonic(), cores)

    def attempt(name: str, path: Path, parse: Callable[[str], object]):
        try:
            return parse(path.read_text())
        except (OSError, ValueError, IndexError) as exc:
            sample.missing[name] = _why(exc, path) if isinstance(exc, OSError) else f"{path}: unexpected format"
            return None

    sample.core_ticks = attempt("other_cores", proc / "stat", lambda t: _core_ticks(t, cores)) or {}
    # utime and stime, fields 14 and 15; the command name (field 2) may hold spaces, so count from its ')'
    sample.own_ticks = attempt("own_cores", proc / str(pid) / "stat",
                               lambda t: sum(int(x) for x in t.rsplit(")", 1)[1].split()[11:13]))
    tasks = proc / str(pid) / "task"
    try:
        tids = sorted(p.name for p in tasks.iterdir())
    except OSError as exc:
        tids = []
        sample.missing["run_queue_wait"] = sample.missing["involuntary_switches"] = _why(exc, tasks)
    switches = 0
    for tid in tids:
        try:
            run_ns, wait_ns = (int(x) for x in (tasks / tid / "schedstat").read_text().split()[:2])
            status = (tasks / tid / "status").read_text()
            switches += int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
        except (OSError, ValueError, IndexError):  # the thread ended since the listing, or no schedstat
            continue
        sample.threads[tid] = (run_ns, wait_ns)
    if tids and not sample.threads:
        sample.missing["run_queue_wait"] = sample.missing["involuntary_switches"] = (
            f"{tasks}/*/schedstat: none readable")
    sample.involuntary = switches if sample.threads else None
    sample.pressure_us = attempt("cpu_pressure", proc / "pressure" / "cpu",
                                 lambda t: int(t.split("total=")[1].split()[0]))
    try:
        cgroup = _cgroup_dir(proc, pid, sys_root)
    except OSError as exc:
        sample.missing["throttled"] = _why(exc, proc / str(pid) / "cgroup")
    else:
        sample.throttled_us = attempt("throttled", cgroup / "cpu.stat",
                                      lambda t: int(t.split("throttled_usec")[1].split()[0]))
    cpus = sys_root / "devices" / "system" / "cpu"
    clocks = [attempt("cpu_mhz", cpus / f"cpu{core}" / "cpufreq" / "scaling_cur_freq", lambda t: int(t) / 1000)
              for core in cores]
    sample.mhz = sum(clocks) / len(clocks) if clocks and None not in clocks else None
    return sample


def deltas(start: Sample, end: Sample, threads: int) -> dict:
    """What happened between two samples of a section, as shares of its time: the record's
    ``resolved.contention`` (before the verdict). ``threads``: how many the cell computes with."""
    wall = max(end.wall - start.wall, 1e-9)
    cores = len(end.cores)
    out: dict = {"wall_s": wall, "cores": cores, "threads": threads}
    missing = {**start.missing, **end.missing}
    both = [c for c in end.cores if c in start.core_ticks and c in end.core_ticks]
    if both:
        busy = sum(end.core_ticks[c][0] - start.core_ticks[c][0] for c in both) / TICKS
        steal = sum(end.core_ticks[c][1] - start.core_ticks[c][1] for c in both) / TICKS
        own = (end.own_ticks - start.own_ticks) / TICKS if None not in (start.own_ticks, end.own_ticks) else 0.0
        out["own_cores"] = own / wall
        out["other_cores"] = max(busy - own, 0.0) / wall
        out["steal_share"] = steal / (wall * len(both))
    threads_seen = [(end.threads[t][0] - start.threads.get(t, (0, 0))[0],
                     end.threads[t][1] - start.threads.get(t, (0, 0))[1]) for t in end.threads]
    if threads_seen and "run_queue_wait" not in missing:
        run, waited = sum(r for r, _ in threads_seen), sum(w for _, w in threads_seen)
        out["run_queue_wait_share"] = waited / (run + waited) if run + waited else 0.0
    if None not in (start.involuntary, end.involuntary):
        out["involuntary_switches"] = end.involuntary - start.involuntary
    if None not in (start.pressure_us, end.pressure_us):
        out["cpu_pressure_share"] = (end.pressure_us - start.pressure_us) / 1e6 / wall
    if None not in (start.throttled_us, end.throttled_us):
        out["throttled_share"] = (end.throttled_us - start.throttled_us) / 1e6 / wall
    if None not in (start.mhz, end.mhz):
        out["cpu_mhz"] = [start.mhz, end.mhz]
    if missing:
        out["not_measured"] = missing
    return out


def reasons(measured: dict, settings: BusySettings) -> list[str]:
    """Why a section was busy, one phrase per threshold passed (empty: quiet)."""
    out = []
    cores = measured.get("cores", 0)
    if measured.get("other_cores", 0.0) > settings.other_cores * cores:
        out.append(f"other processes used {measured['other_cores']:.1f} of {cores} cores")
    fits = measured.get("threads", cores) <= cores
    if fits and measured.get("run_queue_wait_share", 0.0) > settings.run_queue_wait:
        out.append(f"its threads waited for a CPU {measured['run_queue_wait_share']:.0%} of the time")
    if measured.get("throttled_share", 0.0) > settings.throttled:
        out.append(f"the cgroup's CPU quota throttled it {measured['throttled_share']:.0%} of the time")
    if measured.get("steal_share", 0.0) > settings.steal:
        out.append(f"the hypervisor stole {measured['steal_share']:.0%} of its cores")
    return out


def judge(measured: dict, settings: BusySettings, extra: list[str] = ()) -> dict:
    """``measured`` with its verdict: ``quiet``, or ``busy`` and the reasons (``extra``: reasons found
    elsewhere, such as a wait for quiet that ran out)."""
    why = reasons(measured, settings) + list(extra)
    return {**measured, "verdict": BUSY if why else QUIET, **({"reasons": why} if why else {})}


def busy_reason(params: str | dict) -> str | None:
    """The reason a cell's timings were measured on a busy machine, from its results' ``params`` (JSON) or
    record's ``resolved``; None when quiet or not measured (a run before this was recorded)."""
    data = json.loads(params) if isinstance(params, str) else params
    found = (data.get("resolved", data) or {}).get("contention") or {}
    if found.get("verdict") != BUSY:
        return None
    return "; ".join(found.get("reasons") or ["busy"])


def other_cores_over(window_s: float, proc: Path = Path("/proc")) -> tuple[float, int]:
    """Cores of this process's affinity that other processes kept busy over the next ``window_s``, and how
    many cores that is of."""
    start = read(proc=proc)
    time.sleep(window_s)
    measured = deltas(start, read(proc=proc), 1)
    return measured.get("other_cores", 0.0), measured["cores"]


def wait_until_quiet(limit_s: float, settings: BusySettings, say: Callable[[str], None],
                     measure: Callable[[float], tuple[float, int]] = other_cores_over) -> dict:
    """Wait up to ``limit_s`` for a window of ``settings.quiet_window_s`` in which other processes kept at most
    ``settings.other_cores`` of the cores busy; ``say`` hears what it waits for. Returns what happened (the
    job's ``wait``): the seconds waited, whether the machine was quiet, and the last reason it was not."""
    started = time.monotonic()
    window = min(settings.quiet_window_s, limit_s) if limit_s > 0 else settings.quiet_window_s
    while True:
        used, cores = measure(window)
        waited = time.monotonic() - started
        if used <= settings.other_cores * cores:
            return {"limit_s": limit_s, "waited_s": waited, "quiet": True}
        reason = f"other processes used {used:.1f} of {cores} cores"
        if waited + window > limit_s:
            return {"limit_s": limit_s, "waited_s": waited, "quiet": False, "reason": reason}
        say(f"waiting for a quiet machine ({reason}; {waited:.0f} of {limit_s:g} s)")


def wait_reason(wait: dict | None) -> list[str]:
    """A wait for quiet that ran out, as a busy reason."""
    if not wait or wait.get("quiet", True):
        return []
    return [f"the machine was not quiet within --wait-quiet {wait['limit_s']:g} s ({wait.get('reason', '')})"]
