"""Interleaved repeats (asv's way): a cell whose task runs as rounds (:meth:`Task.rounds`) runs one
measured repeat per round in a fresh process, round r of every such cell before round r + 1 of any, so
slow drift of a shared machine (a neighbour's job, thermal state) lands on every cell alike instead of on
whichever cell ran during it. The rounds are then merged into the cell's one record."""

from __future__ import annotations

from harness.core import stats
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


def merge(cell: Cell, records: list[CellRecord]) -> CellRecord:
    """One record from a cell's rounds: the task's figures recomputed over every round's samples, load
    time as a median over rounds (each a cold load), peak memory as the largest round's."""
    base = {"cell_id": cell.cell_id, "cell": cell.model_dump(mode="json"), "params": cell.params,
            "started_at": records[0].started_at, "ended_at": records[-1].ended_at,
            "duration_s": sum(r.duration_s or 0.0 for r in records)}
    bad = next((r for r in records if r.status != OK), None)
    if bad is not None:
        return CellRecord(**base, status=bad.status, reason=f"round {bad.round}: {bad.reason}")
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
                "memory_per_round": [r.resolved["memory"] for r in records]}
    return CellRecord(**base, status=OK, measurements=[m.row() for m in measurements], samples=samples,
                      resolved=resolved, fingerprints=records[0].fingerprints)
