"""Interleaved repeats (asv's way): a cell whose task sets ``interleave`` runs as rounds, one measured
repeat per round in a fresh process, round r of every such cell before round r + 1 of any, so slow
drift of a shared machine (a neighbour's job, thermal state) lands on every cell alike instead of on
whichever cell ran during it. The rounds are then merged into the cell's one record."""

from __future__ import annotations

from harness import stats
from harness.metrics import Measurement
from harness.results import OK
from harness.suite import Cell
from harness.tasks import TASKS


def interleaved(cell: Cell) -> bool:
    return bool(cell.task_spec.get("interleave"))


def rounds_of(cell: Cell) -> int:
    return int(cell.task_spec["repeats"])


def schedule(plain: list[Cell], interleaved_cells: list[Cell]) -> list[tuple[Cell, int | None]]:
    """Plain cells once each (round None), then round r of every interleaved cell before round r + 1."""
    most = max(map(rounds_of, interleaved_cells), default=0)
    return [(c, None) for c in plain] + [(c, r) for r in range(most) for c in interleaved_cells if r < rounds_of(c)]


def round_cell(cell: Cell) -> dict:
    """The cell as one round's worker sees it: one measured repeat."""
    dumped = cell.model_dump(mode="json")
    dumped["task_spec"] = {**dumped["task_spec"], "repeats": 1}
    return dumped


def merge(cell: Cell, records: list[dict]) -> dict:
    """One record from a cell's rounds: the task's figures recomputed over every round's samples, load
    time as a median over rounds (each a cold load), peak memory as the largest round's."""
    base = {"cell_id": cell.cell_id, "cell": cell.model_dump(mode="json"), "params": cell.params,
            "started_at": records[0].get("started_at"), "ended_at": records[-1].get("ended_at"),
            "duration_s": sum(r.get("duration_s", 0.0) for r in records)}
    bad = next((r for r in records if r["status"] != OK), None)
    if bad is not None:
        return {**base, "status": bad["status"], "reason": f"round {bad.get('round')}: {bad['reason']}",
                "measurements": []}
    samples = {name: [v for r in records for v in r["samples"][name]] for name in records[0]["samples"]}

    def per_round(metric: str) -> list[float]:
        return [m["value"] for r in records for m in r["measurements"] if m["metric"] == metric]

    measurements = TASKS[cell.task_spec["type"]].summarize(samples)
    samples["load_s"] = per_round("load_s")
    measurements.append(Measurement("load_s", *stats.median_ci(samples["load_s"])[:1], len(records),
                                    *stats.median_ci(samples["load_s"])[1:]))
    measurements.append(Measurement("model_bytes", per_round("model_bytes")[0]))
    for peak in ("peak_rss_mb", "peak_vram_mb"):
        if per_round(peak):
            measurements.append(Measurement(peak, max(per_round(peak)), len(records)))
    resolved = {**records[0]["resolved"], "rounds": len(records), "interleaved": True,
                "memory_per_round": [r["resolved"]["memory"] for r in records]}
    return {**base, "status": OK, "reason": None, "measurements": [m.row() for m in measurements],
            "samples": samples, "resolved": resolved, "fingerprints": records[0].get("fingerprints")}
