"""Interleaved repeats (asv's way): a cell whose task runs as rounds (:meth:`Task.rounds`) runs one
measured repeat per round in a fresh process, round r of every such cell before round r + 1 of any, so
slow drift of a shared machine (a neighbour's job, thermal state) lands on every cell alike instead of on
whichever cell ran during it. The rounds are then merged into the cell's one record.

A round measured on a busy machine (:mod:`harness.core.contention`, or a machine canary much slower than
the run's median: :mod:`harness.core.canary`) is left out of the cell's evidence; the cell is busy when fewer
than ``min_quiet_rounds`` quiet rounds remain, and then keeps every round (nothing is hidden, all is flagged)."""

from __future__ import annotations

from harness.core import canary, stats
from harness.core.contention import BUSY, QUIET, BusySettings
from harness.core.metrics import Measurement
from harness.results.records import OK, CellRecord
from harness.suite.cells import Cell
from harness.tasks import TASKS

#: one unit of scheduled work: a cell, and its round (None: the whole cell in one process)
Item = tuple[Cell, int | None]


def rounds_of(cell: Cell) -> int | None:
    return TASKS[cell.task_spec.type].rounds(cell.task_spec)


def interleaved(cell: Cell) -> bool:
    return rounds_of(cell) is not None


def phases(plain: list[Cell], interleaved_cells: list[Cell]) -> list[list[Item]]:
    """Plain cells once each (round None) in the first phase, then one phase per round r holding round r
    of every interleaved cell: a phase ends before the next begins (a barrier, however many run at once)."""
    most = max(map(rounds_of, interleaved_cells), default=0)
    return [[(c, None) for c in plain]] + [[(c, r) for c in interleaved_cells if r < rounds_of(c)]
                                           for r in range(most)]


def canary_medians(records: list[CellRecord]) -> dict[int, float]:
    """The median canary time per thread count over every round of a run (the yardstick of a round's)."""
    times: dict[int, list[float]] = {}
    for r in records:
        found = r.resolved.get("contention", {})
        if "canary_s" in found:
            times.setdefault(found["threads"], []).append(found["canary_s"])
    return {threads: canary.median(values) for threads, values in times.items()}


def round_reasons(record: CellRecord, medians: dict[int, float], settings: BusySettings) -> list[str]:
    """Why a round was busy: its own counters' verdict, and a canary slower than the run's median."""
    found = record.resolved.get("contention", {})
    why = list(found.get("reasons", []))
    median = medians.get(found.get("threads"))
    if median and canary.slow_rounds([found.get("canary_s")], median, settings.canary_slowdown):
        why.append(f"the machine canary ran {found['canary_s'] / median - 1:.0%} slower than the run's median")
    return why


def judge_rounds(records: list[CellRecord], medians: dict[int, float], settings: BusySettings
                 ) -> tuple[list[CellRecord], dict]:
    """The rounds that are the cell's evidence, and the cell's ``resolved.contention``: quiet rounds only when
    at least ``min_quiet_rounds`` of them (or all rounds, if fewer) remain; else every round, and busy."""
    why = [round_reasons(r, medians, settings) for r in records]
    quiet = [r for r, w in zip(records, why, strict=True) if not w]
    busy = [f"round {r.round}: {'; '.join(w)}" for r, w in zip(records, why, strict=True) if w]
    per_round = [{**r.resolved.get("contention", {}), "verdict": BUSY if w else QUIET, "reasons": w}
                 for r, w in zip(records, why, strict=True)]
    run_median = medians.get(per_round[0].get("threads"))
    mine = canary.median([c.get("canary_s") for c in per_round])
    summary = {"rounds": per_round, **({"canary_median_s": run_median, "canary_drift": mine / run_median}
                                       if run_median and mine else {})}
    need = min(settings.min_quiet_rounds, len(records))
    if len(quiet) >= need:
        left_out = [r.round for r, w in zip(records, why, strict=True) if w]
        return quiet, {**summary, "verdict": QUIET, **({"rounds_left_out": left_out, "left_out_because": busy}
                                                        if left_out else {})}
    reason = f"{len(quiet)} of {len(records)} rounds quiet, fewer than {need} ({busy[0]}"
    reason += f"; {len(busy) - 1} more)" if len(busy) > 1 else ")"
    return records, {**summary, "verdict": BUSY, "reasons": [reason]}


def merge(cell: Cell, records: list[CellRecord], medians: dict[int, float] | None = None,
          settings: BusySettings | None = None) -> CellRecord:
    """One record from a cell's rounds: the task's figures recomputed over its evidence's samples (the quiet
    rounds, see :func:`judge_rounds`), load time as a median over those rounds (each a cold load), peak memory
    as the largest round's."""
    base = {"cell_id": cell.cell_id, "cell": cell.model_dump(mode="json"), "params": cell.params,
            "started_at": records[0].started_at, "ended_at": records[-1].ended_at,
            "duration_s": sum(r.duration_s or 0.0 for r in records)}
    bad = next((r for r in records if r.status != OK), None)
    if bad is not None:
        return CellRecord(**base, status=bad.status, reason=f"round {bad.round}: {bad.reason}")
    memory_per_round = [r.resolved["memory"] for r in records]
    records, contention = judge_rounds(records, medians or {}, settings or BusySettings())
    samples = {name: [v for r in records for v in r.samples[name]] for name in records[0].samples}

    def per_round(metric: str) -> list[float]:
        return [m["value"] for r in records for m in r.measurements if m["metric"] == metric]

    measurements = TASKS[cell.task_spec.type].summarize(samples)
    samples["load_s"] = per_round("load_s")
    measurements.append(Measurement("load_s", *stats.median_ci(samples["load_s"])[:1], len(records),
                                    *stats.median_ci(samples["load_s"])[1:]))
    measurements.append(Measurement("model_bytes", per_round("model_bytes")[0]))
    for peak in ("peak_rss_mb", "peak_vram_mb"):
        if per_round(peak):
            measurements.append(Measurement(peak, max(per_round(peak)), len(records)))
    resolved = {**records[0].resolved, "rounds": len(records), "interleaved": True,
                "memory_per_round": memory_per_round, "contention": contention}
    return CellRecord(**base, status=OK, measurements=[m.row() for m in measurements], samples=samples,
                      resolved=resolved, fingerprints=records[0].fingerprints)
