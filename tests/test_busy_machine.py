"""A busy machine is detected and said: the contention verdict on synthetic /proc counters (no wall clock),
interleaved rounds judged and left out, the wait for quiet, and one run with real busy-loop neighbours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.core import contention
from harness.core.contention import TICKS, BusySettings, busy_reason, deltas, judge, read
from harness.results.records import OK, CellRecord
from harness.run import rounds
from harness.suite.cells import expand
from harness.suite.parse import parse_suite
from suites import write_suite

PID = 4242


def write_proc(root: Path, busy=(0, 0), steal=(0, 0), own=0, threads=None, switches=3, pressure_us=0,
               throttled_us=0, mhz=(2000, 2000)) -> None:
    """A /proc and /sys as the kernel lays them out, holding the given cumulative counters (ticks for the
    cores' busy and steal time and the process's own, ns for the threads' run and wait, µs for pressure and
    throttling)."""
    proc, sys_root = root / "proc", root / "sys"
    lines = ["cpu  1 2 3 4 5 6 7 8 9 10"]
    for core, (b, s) in enumerate(zip(busy, steal, strict=True)):
        lines.append(f"cpu{core} {b} 0 0 1000 0 0 0 {s} 0 0")
    (proc / str(PID) / "task").mkdir(parents=True, exist_ok=True)
    (proc / "pressure").mkdir(exist_ok=True)
    (proc / "stat").write_text("\n".join(lines) + "\nintr 1 2 3\n")
    (proc / str(PID) / "stat").write_text(f"{PID} (python -m x) R 1 1 1 0 -1 4194304 10 0 0 0 {own} 0 0 0 20 0 3\n")
    (proc / str(PID) / "cgroup").write_text("0::/user.slice/cell.scope\n")
    for tid, (run, wait) in (threads or {PID: (0, 0)}).items():
        (proc / str(PID) / "task" / str(tid)).mkdir(exist_ok=True)
        (proc / str(PID) / "task" / str(tid) / "schedstat").write_text(f"{int(run)} {int(wait)} 17\n")
        (proc / str(PID) / "task" / str(tid) / "status").write_text(
            f"Name:\tpython\nvoluntary_ctxt_switches:\t9\nnonvoluntary_ctxt_switches:\t{switches}\n")
    (proc / "pressure" / "cpu").write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={pressure_us}\n"
                                           "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    cgroup = sys_root / "fs" / "cgroup" / "user.slice" / "cell.scope"
    cgroup.mkdir(parents=True, exist_ok=True)
    (cgroup / "cpu.stat").write_text(f"usage_usec 1\nuser_usec 1\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\n"
                                     f"throttled_usec {throttled_us}\n")
    for core, clock in enumerate(mhz):
        freq = sys_root / "devices" / "system" / "cpu" / f"cpu{core}" / "cpufreq"
        freq.mkdir(parents=True, exist_ok=True)
        (freq / "scaling_cur_freq").write_text(f"{clock * 1000}\n")


def section(tmp_path: Path, start: dict, end: dict, cores=(0, 1), threads=1, wall=10.0) -> dict:
    """The measured deltas of a ``wall``-second section between two states of the fake /proc."""
    write_proc(tmp_path, **start)
    before = read(PID, list(cores), tmp_path / "proc", tmp_path / "sys")
    write_proc(tmp_path, **end)
    after = read(PID, list(cores), tmp_path / "proc", tmp_path / "sys")
    before.wall, after.wall = 0.0, wall
    return deltas(before, after, threads)


def test_an_idle_machine_is_quiet_and_every_counter_is_read(tmp_path):
    measured = section(tmp_path, {"threads": {PID: (0, 0)}},
                       {"busy": (5 * TICKS, 1 * TICKS), "own": 5 * TICKS, "threads": {PID: (5e9, 0.05e9)},
                        "switches": 40, "pressure_us": 100_000, "mhz": (2400, 2200)})
    verdict = judge(measured, BusySettings())
    assert verdict["verdict"] == "quiet" and "reasons" not in verdict and "not_measured" not in verdict
    assert measured["own_cores"] == pytest.approx(0.5) and measured["other_cores"] == pytest.approx(0.1)
    assert measured["run_queue_wait_share"] == pytest.approx(0.05 / 5.05)
    assert measured["involuntary_switches"] == 37 and measured["cpu_pressure_share"] == pytest.approx(0.01)
    assert measured["throttled_share"] == 0 and measured["steal_share"] == 0
    assert measured["cpu_mhz"] == [2000, 2300]


def test_other_processes_on_the_cells_cores_make_it_busy_and_say_how_busy(tmp_path):
    # the cell used 1 core for 10 s; its two cores were busy 27 s: others used 1.7 of 2 cores
    measured = section(tmp_path, {}, {"busy": (14 * TICKS, 13 * TICKS), "own": 10 * TICKS})
    verdict = judge(measured, BusySettings())
    assert verdict["verdict"] == "busy"
    assert verdict["reasons"] == ["other processes used 1.7 of 2 cores"]
    assert busy_reason(json.dumps({"task": {}, "resolved": {"contention": verdict}})) == verdict["reasons"][0]
    assert judge(measured, BusySettings(other_cores=0.9))["verdict"] == "quiet"  # the threshold is the suite's


def test_a_cell_pinned_to_one_core_is_judged_on_that_core_alone(tmp_path):
    other_core_busy = section(tmp_path, {}, {"busy": (1 * TICKS, 10 * TICKS), "own": 1 * TICKS}, cores=(0,))
    assert judge(other_core_busy, BusySettings())["verdict"] == "quiet" and other_core_busy["cores"] == 1
    own_core_busy = section(tmp_path, {}, {"busy": (9 * TICKS, 0), "own": 3 * TICKS}, cores=(0,))
    assert judge(own_core_busy, BusySettings())["reasons"] == ["other processes used 0.6 of 1 cores"]


def test_run_queue_wait_throttling_and_steal_each_make_it_busy(tmp_path):
    waited = section(tmp_path, {"threads": {PID: (0, 0), 4243: (0, 0)}},
                     {"threads": {PID: (6e9, 2e9), 4243: (6e9, 2e9), 4244: (1e9, 1e9)}}, threads=2)
    assert waited["run_queue_wait_share"] == pytest.approx(5 / 18)  # a thread started inside counts from 0
    assert judge(waited, BusySettings())["reasons"] == ["its threads waited for a CPU 28% of the time"]
    # more threads than cores wait on each other: that is the cell's own setting, not a neighbour
    assert judge({**waited, "threads": 3}, BusySettings())["verdict"] == "quiet"
    throttled = section(tmp_path, {}, {"throttled_us": 2_000_000})
    assert judge(throttled, BusySettings())["reasons"] == ["the cgroup's CPU quota throttled it 20% of the time"]
    stolen = section(tmp_path, {}, {"busy": (0, 0), "steal": (2 * TICKS, 0)})
    assert judge(stolen, BusySettings())["reasons"] == ["the hypervisor stole 10% of its cores"]


def test_sources_that_are_absent_are_listed_as_not_measured(tmp_path):
    (tmp_path / "proc").mkdir()
    before = read(PID, [0, 1], tmp_path / "proc", tmp_path / "sys")
    measured = deltas(before, read(PID, [0, 1], tmp_path / "proc", tmp_path / "sys"), 1)
    assert set(measured["not_measured"]) == {"other_cores", "own_cores", "run_queue_wait", "involuntary_switches",
                                             "cpu_pressure", "throttled", "cpu_mhz"}
    assert "does not exist" in measured["not_measured"]["cpu_pressure"]
    assert judge(measured, BusySettings())["verdict"] == "quiet"
    real = read()  # this machine: whatever it exposes, read without an error
    assert real.cores == sorted(os.sched_getaffinity(0))


def test_wait_for_quiet_waits_for_a_quiet_window_or_flags_the_cell(monkeypatch):
    heard = []
    neighbour = iter([(1.8, 2), (1.6, 2), (0.1, 2)])
    settings = BusySettings(quiet_window_s=0.01)
    wait = contention.wait_until_quiet(5, settings, heard.append, lambda window: next(neighbour))
    assert wait["quiet"] and len(heard) == 2 and "other processes used 1.8 of 2 cores" in heard[0]
    assert contention.wait_reason(wait) == []
    never = contention.wait_until_quiet(0.05, settings, heard.append, lambda window: (time.sleep(window), (2.0, 2))[1])
    assert not never["quiet"]
    assert contention.wait_reason(never) == [
        "the machine was not quiet within --wait-quiet 0.05 s (other processes used 2.0 of 2 cores)"]


def _round(cell, index: int, decode: float, reasons=(), canary_s=0.02) -> CellRecord:
    found = {"cores": 2, "threads": 1, "canary_s": canary_s, "verdict": "busy" if reasons else "quiet",
             **({"reasons": list(reasons)} if reasons else {})}
    return CellRecord(cell_id=cell.cell_id, cell=cell.model_dump(mode="json"), params=cell.params, status=OK,
                      measurements=[{"metric": "load_s", "value": 0.1}, {"metric": "model_bytes", "value": 10.0}],
                      samples={"decode_tok_s": [decode], "prefill_tok_s": [decode * 3]},
                      resolved={"memory": {}, "contention": found}, round=index)


@pytest.fixture
def speed_cell(tmp_path):
    suite = {"name": "r", "models": {"ng": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "backends": {"ngram": {"type": "ngram"}},
             "tasks": {"speed": {"type": "throughput", "repeats": 7, "interleave": True}},
             "matrix": [{"model": "ng", "backend": "ngram", "task": "speed"}]}
    return expand(parse_suite(write_suite(tmp_path, suite))[0])[0]


def test_busy_rounds_are_left_out_of_the_cells_evidence(speed_cell):
    records = [_round(speed_cell, i, 100.0 + i) for i in range(7)]
    records[2] = _round(speed_cell, 2, 10.0, ["other processes used 1.7 of 2 cores"])
    records[5] = _round(speed_cell, 5, 20.0, canary_s=0.03)  # its canary 50% slower than the run's median
    merged = rounds.merge(speed_cell, records, rounds.canary_medians(records), BusySettings())
    found = merged.resolved["contention"]
    assert found["verdict"] == "quiet" and found["rounds_left_out"] == [2, 5]
    assert "round 5: the machine canary ran 50% slower than the run's median" in found["left_out_because"]
    assert merged.samples["decode_tok_s"] == [100.0, 101.0, 103.0, 104.0, 106.0]
    assert merged.resolved["rounds"] == 5  # compare's processes: the rounds that are evidence
    assert busy_reason(merged.resolved) is None


def test_a_cell_with_fewer_than_five_quiet_rounds_is_busy_and_keeps_every_round(speed_cell):
    reason = ["other processes used 1.7 of 2 cores"]
    records = [_round(speed_cell, i, 50.0 + i, reason if i < 3 else ()) for i in range(7)]
    merged = rounds.merge(speed_cell, records, rounds.canary_medians(records), BusySettings())
    assert busy_reason(merged.resolved) == ("4 of 7 rounds quiet, fewer than 5 (round 0: other processes used "
                                            "1.7 of 2 cores; 2 more)")
    assert len(merged.samples["decode_tok_s"]) == 7 and merged.resolved["rounds"] == 7  # nothing hidden
    relaxed = rounds.merge(speed_cell, records, {}, BusySettings(min_quiet_rounds=4))
    assert busy_reason(relaxed.resolved) is None and relaxed.resolved["rounds"] == 4


def busy_loop(cores: set[int]) -> subprocess.Popen:
    """A neighbour at normal priority spinning on ``cores``."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(process.pid, cores)
    return process


def test_busy_loop_neighbours_flag_the_ngram_timing_cell(tmp_path, capsys):
    """Real neighbours, one per cell thread, pinned to the cell's cores: the wait for quiet says what it waits
    for and runs out, the cell is flagged busy, the console says so under its tables. The cell runs on one
    core (this test's affinity, inherited), so the check holds on a machine of any size, idle or loaded: it
    asserts the flag, never a speed."""
    suite = {"name": "neighbours", "models": {"ng": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "backends": {"ngram": {"type": "ngram"}},
             "tasks": {"speed": {"type": "throughput", "prompt_tokens": 64, "new_tokens": 64, "repeats": 30}},
             "matrix": [{"model": "ng", "backend": "ngram", "task": "speed"}]}
    path = write_suite(tmp_path, suite)
    mine = os.sched_getaffinity(0)
    cell_cores = {min(mine)}
    neighbours = []
    try:
        os.sched_setaffinity(0, cell_cores)  # the cell's worker inherits it
        neighbours = [busy_loop(cell_cores)]  # the n-gram computes with one thread
        assert main(["run", str(path), "--out", str(tmp_path / "run"), "--wait-quiet", "0.5",
                     "--set", "busy.quiet_window_s=0.2"]) == 0
    finally:
        for process in neighbours:
            process.kill()
            process.wait()
        os.sched_setaffinity(0, mine)
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    found = json.loads(table["params"].iloc[0])["resolved"]["contention"]
    assert found["verdict"] == "busy" and found["cores"] == 1, found
    assert found["wait"]["quiet"] is False
    assert "the machine was not quiet within --wait-quiet 0.5 s" in busy_reason(table["params"].iloc[0])
    out = capsys.readouterr().out
    assert "waiting for a quiet machine (other processes used" in out
    assert "Machine busy during 1 cell" in out and "ng/ngram/speed" in out


def test_wait_quiet_must_be_a_number_of_seconds(tmp_path, capsys):
    suite = {"name": "w", "models": {"ng": {"ngram": {"order": 2, "train": "builtin:stdlib-docs#train"}}},
             "backends": {"ngram": {"type": "ngram"}}, "tasks": {"speed": {"type": "throughput"}},
             "matrix": [{"model": "ng", "backend": "ngram", "task": "speed"}]}
    assert main(["run", str(write_suite(tmp_path, suite)), "--wait-quiet", "-1"]) == 2
    assert "--wait-quiet -1: expected a number of seconds ≥ 0" in capsys.readouterr().err
    assert main(["validate", str(write_suite(tmp_path, suite)), "--set", "busy.other_cores=2"]) == 2
    assert "busy.other_cores" in capsys.readouterr().err
