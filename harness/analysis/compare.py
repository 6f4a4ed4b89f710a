"""``harness compare BASE NEW``: did anything get worse between two runs of one suite?

Cells are matched by their names (model, backend, task, dataset), not by ``cell_id``: the id hashes the
settings, and a nightly job must notice that tonight's cell with fewer threads is slower, not call it a
new cell. Settings that differ between matched cells (and model or corpus files whose sha256 changed)
are listed in the row's note, so a reader sees why a number moved.

Each metric is judged by its gate (:mod:`harness.analysis.gates`) in its direction (``higher_is_better``):
timings must pass a ratio threshold and be significant (asv's rule) across independent processes;
deterministic metrics must pass a tolerance; an accuracy over a sample of documents (lm-eval's, with its stderr) must
differ significantly by a z-test on the two standard errors.

The unit of replication of a timing is the process, not the repeat: repeats inside one process share its
state (where the OS put its threads, what its neighbours were doing during that minute) and agree far more
closely than two runs do, so a test on them calls a drift of the machine significant. An interleaved cell
(one fresh process per round) contributes one figure per round; any other cell contributes one figure, its
reported value, and a single figure has no spread to test with: a run with one process cannot show that a
change is more than noise on its own. A history of runs (:mod:`harness.analysis.noise`) supplies what it
lacks: the night-to-night spread, which widens the threshold to at least k·σ and, for a run with one
process, is the test. Verdicts: improved, regressed, unchanged, new, missing, failed, and changed (a count that
differs, or a timing past its threshold that too few processes measured and no history calibrates: shown,
never gating), and ``not comparable (machine busy)``: a timing measured on a busy machine on either side
(:mod:`harness.core.contention`) is never called regressed or improved; the row keeps what the gate would
have said (``ignoring_busy``).
Regressed or failed rows make the exit code 1; ``--require-quiet`` makes a not comparable row an error too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from math import comb

import numpy as np
import pandas as pd

from harness.analysis.gates import Gates
from harness.analysis.noise import UNCALIBRATED, History, Spread
from harness.core import markdown, stats
from harness.core.contention import busy_reason
from harness.core.errors import UserError
from harness.core.format import fmt_value
from harness.core.gates import COUNT, EXACT, NOISY, STDERR, Policy
from harness.results.records import FAILED, OK, TIMEOUT
from harness.results.store import RunTables

KEY = ("model", "backend", "task", "dataset")

FAILED_V, REGRESSED, MISSING, NEW, CHANGED, IMPROVED, UNCHANGED = (
    "failed", "regressed", "missing", "new", "changed", "improved", "unchanged")
NOT_COMPARABLE = "not comparable (machine busy)"
#: worst first
VERDICTS = (FAILED_V, REGRESSED, MISSING, NEW, CHANGED, NOT_COMPARABLE, IMPROVED, UNCHANGED)
#: verdicts that make the exit code 1
GATING = (FAILED_V, REGRESSED)

#: params that are measurements of the run, not settings: memory figures, timings, cache hits; and where the
#: cell ran, which :func:`hardware_notes` reads (a cluster node's id changes at every start)
MEASURED = re.compile(r"^resolved\.memory|_s$|_mb$|\.trained_now$|^resolved\.(rounds|interleaved)$|^resolved\.where\."
                      r"|^resolved\.contention\.")
#: what names a machine's hardware in a record's ``resolved.where`` (the run's environment lacks a hostname)
HARDWARE = ("hostname", "cpu", "gpu")


@dataclass
class Row:
    """One line of the comparison: a metric of a matched cell, or a whole cell that has no pair."""

    verdict: str
    model: str
    backend: str
    task: str
    dataset: str | None
    metric: str | None = None
    unit: str | None = None
    higher_is_better: bool | None = None
    base: float | None = None
    new: float | None = None
    change: float | None = None  # new / base − 1
    worse_by: float | None = None  # ratio > 1 when new is worse, in the metric's direction
    test: str = ""
    p_value: float | None = None
    gate: str = ""
    sigma: float | None = None  # the night-to-night spread that calibrated the threshold, relative to its level
    note: str = ""
    busy: str = ""  # why the machine was busy (BASE, NEW or both), for a timing not comparable
    ignoring_busy: str | None = None  # the verdict the gate would give a not comparable row on the figures alone

    @property
    def label(self) -> str:
        return f"{self.model}/{self.backend}/{self.task}"


@dataclass
class Comparison:
    base: RunTables
    new: RunTables
    alpha: float
    history: History | None = None
    rows: list[Row] = field(default_factory=list)
    timings: bool = False  # whether any timing was judged (what the calibration note is about)

    @property
    def regressions(self) -> int:
        return sum(r.verdict in GATING for r in self.rows)

    @property
    def not_comparable(self) -> int:
        return sum(r.verdict == NOT_COMPARABLE for r in self.rows)

    def counts(self) -> dict[str, int]:
        return {v: sum(r.verdict == v for r in self.rows) for v in VERDICTS}


def significance(a: np.ndarray, b: np.ndarray, alpha: float) -> tuple[bool | None, str, float | None]:
    """asv's ``is_different`` on one figure per independent process: Mann-Whitney U when there are enough
    processes for the test to reach ``alpha`` at all, else whether the order-statistic CIs of the medians
    over processes are disjoint. None when a side has too few processes for either (one run, one process)."""
    if len(a) and len(b) and 2 / comb(len(a) + len(b), len(a)) < alpha:
        from scipy.stats import mannwhitneyu

        p = float(mannwhitneyu(a, b, alternative="two-sided").pvalue)
        return bool(p < alpha), f"Mann-Whitney U ({len(a)} vs {len(b)} processes) p={p:.2g}", p
    (_, *ci_a), (_, *ci_b) = stats.median_ci(a), stats.median_ci(b)
    if all(_finite(x) for x in (*ci_a, *ci_b)):
        disjoint = bool(ci_a[1] < ci_b[0] or ci_b[1] < ci_a[0])  # a plain bool, not numpy's
        return disjoint, f"CIs over processes ({len(a)} vs {len(b)}) {'disjoint' if disjoint else 'overlap'}", None
    return None, f"{len(a)} vs {len(b)} processes: untestable", None


def _finite(x) -> bool:
    return x is not None and not pd.isna(x) and math.isfinite(x)


def judge(policy: Policy, higher_is_better: bool | None, base: pd.Series, new: pd.Series,
          base_processes: np.ndarray, new_processes: np.ndarray, alpha: float, spread: Spread | None = None) -> dict:
    """Verdict of one metric of a matched cell, with the figures that led to it. A timing's evidence is one
    figure per process (``*_processes``); ``spread``, the night-to-night noise from a history, widens its
    threshold to at least k·σ and decides when the processes cannot."""
    b, n = float(base["value"]), float(new["value"])
    out = {"base": b, "new": n, "change": n / b - 1 if b else None, "gate": policy.describe()}
    if _finite(b) and _finite(n) and b > 0 and n > 0 and higher_is_better is not None:
        out["worse_by"] = b / n if higher_is_better else n / b
    better = None if higher_is_better is None else (n > b) == bool(higher_is_better)
    if policy.kind == COUNT or higher_is_better is None:
        return {**out, "verdict": UNCHANGED if n == b else CHANGED}
    if policy.kind == EXACT:
        moved = abs(n - b) > max(policy.tolerance * abs(b), policy.abs_tolerance)
        return {**out, "verdict": (IMPROVED if better else REGRESSED) if moved else UNCHANGED, "test": "tolerance"}
    if policy.kind == STDERR:
        return {**out, **stderr_verdict(b, n, base.get("stderr"), new.get("stderr"), alpha, better)}
    threshold = policy.threshold
    if spread is None:
        out["gate"] = f"ratio ≥ {threshold:g} (not calibrated) and significant"
    else:
        threshold = spread.widen(threshold, policy.k)
        out["sigma"] = spread.relative
        out["gate"] = (f"ratio ≥ {threshold:.3g} (≥ {policy.k:g}σ, σ {spread.relative * 100:.1f}% over "
                       f"{spread.runs} runs; gate {policy.threshold:g}) and significant")
    ratio = max(b, n) / min(b, n) if min(b, n) > 0 else math.inf
    sig, test, p = significance(base_processes, new_processes, alpha)
    if sig is None and spread is not None:  # one process: the history's spread is the only noise known
        sig = bool(abs(math.log(n / b)) > policy.k * spread.relative) if b > 0 and n > 0 else bool(
            abs(n - b) > policy.k * spread.sigma)
        test += f"; |Δ| {'>' if sig else '≤'} {policy.k:g}σ of {spread.runs} runs"
    if ratio < threshold or sig is False:
        verdict = UNCHANGED
    elif sig is None:  # past the threshold, but one process each cannot show it is more than noise
        verdict = CHANGED
    else:
        verdict = IMPROVED if better else REGRESSED
    return {**out, "verdict": verdict, "test": test, "p_value": p}


def stderr_verdict(b: float, n: float, stderr_b, stderr_n, alpha: float, better: bool) -> dict:
    """A metric estimated over a sample (an accuracy) moved only when a z-test on the two values' standard
    errors says so at ``alpha``; without both stderrs a difference is shown (changed), never gated."""
    if not (_finite(stderr_b) and _finite(stderr_n)):
        return {"verdict": UNCHANGED if n == b else CHANGED, "test": "no stderr to test with"}
    p = stats.z_test_p(b, float(stderr_b), n, float(stderr_n))
    verdict = UNCHANGED if p >= alpha else IMPROVED if better else REGRESSED
    return {"verdict": verdict, "test": f"z-test on stderr p={p:.2g}", "p_value": p}


def _flat(params: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_diff(base_params: str, new_params: str) -> list[str]:
    """``key: old → new`` for every setting (suite or resolved at run time) that differs."""
    old, new = _flat(json.loads(base_params)), _flat(json.loads(new_params))
    keys = sorted(k for k in old.keys() | new.keys() if not MEASURED.search(k) and old.get(k) != new.get(k))

    def echoes_a_setting(key: str) -> bool:  # resolved.backend.n_threads repeating backend.n_threads
        suite_key = key.removeprefix("resolved.")
        return suite_key != key and suite_key in keys and (old.get(key), new.get(key)) == (
            old.get(suite_key), new.get(suite_key))

    return [f"{k}: {old.get(k)} → {new.get(k)}" for k in keys if not echoes_a_setting(k)]


def _hardware(run: RunTables, params: str) -> dict:
    """Where a cell ran: its record's ``resolved.where``, else (a run before records said so) the run's
    machine."""
    where = json.loads(params).get("resolved", {}).get("where") or run.info.get("environment", {})
    return {k: where[k] for k in HARDWARE if k in where}


def hardware_notes(base: RunTables, new: RunTables, old_cell: pd.Series, new_cell: pd.Series) -> list[str]:
    """``ran on other hardware: cpu A → B`` when matched cells ran on different machines (timings then
    differ for that reason too); never for a cluster node's id alone."""
    old, now = _hardware(base, old_cell["params"]), _hardware(new, new_cell["params"])
    changed = [f"{k} {_hw(old[k])} → {_hw(now[k])}" for k in HARDWARE if k in old and k in now and old[k] != now[k]]
    return [f"ran on other hardware: {', '.join(changed)}"] if changed else []


def _hw(value) -> str:
    return ("; ".join(value) or "none") if isinstance(value, list) else str(value)


def _fingerprint_notes(base: RunTables, new: RunTables, cell: pd.Series) -> list[str]:
    notes = []
    for section, name in (("models", cell["model"]), ("datasets", cell["dataset"])):
        old = base.info.get(section, {}).get(name, {}).get("sha256")
        now = new.info.get(section, {}).get(name, {}).get("sha256")
        if old and now and old != now:
            notes.append(f"{section[:-1]} {name} sha256 {old[:8]} → {now[:8]}")
    return notes


def _cells(run: RunTables) -> dict[tuple, pd.DataFrame]:
    frame = run.results.astype({"dataset": "object"}).fillna({"dataset": ""})
    return {key: group for key, group in frame.groupby(list(KEY), sort=False, dropna=False)}


def _samples(run: RunTables, cell_id: str) -> dict[str, np.ndarray]:
    s = run.samples[run.samples["cell_id"] == cell_id]
    return {name: g.sort_values("index")["value"].to_numpy() for name, g in s.groupby("sample")}


def processes(params: str) -> int:
    """How many independent processes measured a cell: its rounds when interleaved, else one."""
    resolved = json.loads(params).get("resolved") or {}
    return int(resolved.get("rounds", 1)) if resolved.get("interleaved") else 1


def per_process(value: float, samples: np.ndarray | None, n_processes: int) -> np.ndarray:
    """One figure per process: an interleaved cell's per-round samples (one each), else the reported value
    (the repeats of one process are one observation of the machine, however many there are)."""
    if samples is not None and n_processes > 1 and len(samples) == n_processes:
        return samples
    return np.array([value]) if _finite(value) else np.array([])


def _whole_cell(verdict: str, key: tuple, note: str) -> Row:
    return Row(verdict, *key[:3], key[3] or None, note=note)


def _status_note(run: str, cell: pd.DataFrame | None) -> str:
    if cell is None:
        return f"not in {run}"
    first = cell.iloc[0]
    return f"{first['status']} in {run}: {first['reason']}"


def compare(base: RunTables, new: RunTables, gates: Gates, history: History | None = None) -> Comparison:
    """Match the two runs' cells and judge every metric (timings calibrated by ``history`` where it knows
    their spread); raises UserError for runs of different suites."""
    if base.suite != new.suite:
        raise UserError(f"{base.path} is a run of suite '{base.suite}', {new.path} of suite '{new.suite}': "
                        "compare runs of the same suite")
    result = Comparison(base, new, gates.alpha, history)
    old_cells, new_cells = _cells(base), _cells(new)
    for key in list(new_cells) + [k for k in old_cells if k not in new_cells]:
        old, now = old_cells.get(key), new_cells.get(key)
        old_status = None if old is None else old.iloc[0]["status"]
        now_status = None if now is None else now.iloc[0]["status"]
        if now_status in (FAILED, TIMEOUT):
            result.rows.append(_whole_cell(FAILED_V, key, _status_note("NEW", now)))
        elif now_status != OK:
            verdict = MISSING if old_status == OK else UNCHANGED
            note = _status_note("NEW", now) + ("" if old_status == OK else f"; {_status_note('BASE', old)}")
            result.rows.append(_whole_cell(verdict, key, note))
        elif old_status != OK:
            result.rows.append(_whole_cell(NEW, key, _status_note("BASE", old)))
        else:
            result.rows.extend(_compare_cell(base, new, old, now, key, gates, history))
    result.timings = any(gates.policy(r.metric).kind == NOISY for r in result.rows if r.metric)
    result.rows.sort(key=lambda r: (VERDICTS.index(r.verdict), -(r.worse_by or 0) if r.verdict == REGRESSED
                                    else (r.worse_by or 0) if r.verdict == IMPROVED else 0))
    return result


def _compare_cell(base: RunTables, new: RunTables, old: pd.DataFrame, now: pd.DataFrame, key: tuple,
                  gates: Gates, history: History | None) -> list[Row]:
    notes = (settings_diff(old.iloc[0]["params"], now.iloc[0]["params"]) + _fingerprint_notes(base, new, now.iloc[0])
             + hardware_notes(base, new, old.iloc[0], now.iloc[0]))
    old_m, new_m = old.set_index("metric"), now.set_index("metric")
    old_s, new_s = _samples(base, old.iloc[0]["cell_id"]), _samples(new, now.iloc[0]["cell_id"])
    old_p, new_p = processes(old.iloc[0]["params"]), processes(now.iloc[0]["params"])
    counts = [f"{m} {fmt_value(old_m.loc[m, 'value'])} → {fmt_value(new_m.loc[m, 'value'])}"
              for m in old_m.index.intersection(new_m.index)
              if gates.policy(m).kind == COUNT and old_m.loc[m, "value"] != new_m.loc[m, "value"]]
    note = "; ".join(notes + counts)
    busy = "; ".join(f"{side}: {reason}" for side, reason in (("BASE", busy_reason(old.iloc[0]["params"])),
                                                              ("NEW", busy_reason(now.iloc[0]["params"]))) if reason)
    rows = []
    for metric in list(new_m.index) + [m for m in old_m.index if m not in new_m.index]:
        row = new_m.loc[metric] if metric in new_m.index else old_m.loc[metric]
        hib = None if pd.isna(row["higher_is_better"]) else bool(row["higher_is_better"])
        common = {"metric": metric, "unit": row["unit"], "higher_is_better": hib, "note": note}
        if metric not in old_m.index or metric not in new_m.index:
            verdict = NEW if metric not in old_m.index else MISSING
            rows.append(Row(verdict, *key[:3], key[3] or None, **common,
                            **({"new": float(row["value"])} if verdict == NEW else {"base": float(row["value"])})))
            continue
        policy = gates.policy(metric)
        before, after = old_m.loc[metric], new_m.loc[metric]
        judged = judge(policy, hib, before, after, per_process(before["value"], old_s.get(metric), old_p),
                       per_process(after["value"], new_s.get(metric), new_p), gates.alpha,
                       history.spread(key, metric) if history is not None else None)
        verdict = judged.pop("verdict")
        if busy and policy.kind == NOISY:  # a figure of a busy machine says nothing about the code
            judged.update(busy=f"machine busy: {busy}", ignoring_busy=verdict)
            verdict = NOT_COMPARABLE
        rows.append(Row(verdict, *key[:3], key[3] or None, **common, **judged))
    return rows


# --- output -----------------------------------------------------------------------------------------------

def _change_text(row: Row) -> str:
    if row.change is None:
        return ""
    return f"{row.change * 100:+.1f}%"


def _calibration_note(result: Comparison) -> str:
    if not result.timings:
        return ""
    return UNCALIBRATED if result.history is None else result.history.describe()


def _busy_note(result: Comparison) -> str:
    if not result.not_comparable:
        return ""
    cells = sorted({r.label for r in result.rows if r.verdict == NOT_COMPARABLE})
    return (f"{result.not_comparable} timing rows not comparable: the machine was busy on one side or both "
            f"({', '.join(cells)}); they are not judged (`--require-quiet` makes this an error). ")


def to_markdown(result: Comparison, show_all: bool = False) -> str:
    counts = result.counts()
    head = (f"**{markdown.text(result.new.suite)}**: {markdown.code(result.base.run_id)} (base) → "
            f"{markdown.code(result.new.run_id)} (new): "
            + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + ". "
            + ("**Regression.**" if result.regressions else "No regression.") + " " + _busy_note(result)
            + _calibration_note(result))
    shown = [r for r in result.rows if show_all or r.verdict != UNCHANGED]
    table = [[r.verdict, r.label, r.metric or "", fmt_value(r.base), fmt_value(r.new), _change_text(r), r.test,
              r.gate, "; ".join(n for n in (r.busy, r.note) if n)] for r in shown]
    hidden = len(result.rows) - len(shown)
    tail = f"\n\n{hidden} unchanged rows not shown (--all shows them)." if hidden else ""
    if not table:
        return head + tail + "\n"
    headers = ["verdict", "cell", "metric", "base", "new", "change", "test", "gate", "note"]
    return head + "\n\n" + markdown.table(table, headers) + tail + "\n"


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(result: Comparison) -> str:
    def run(r: RunTables) -> dict:
        return {"dir": str(r.path), "run_id": r.run_id, "suite": r.suite,
                "git_commit": r.info.get("environment", {}).get("git_commit")}

    history = result.history
    calibration = {"history": history.source if history else None,
                   "runs": len(history.runs) if history and history.spreads else 0, "note": _calibration_note(result)}
    doc = {"base": run(result.base), "new": run(result.new), "alpha": result.alpha, "calibration": calibration,
           "regressions": result.regressions, "not_comparable": result.not_comparable, "counts": result.counts(),
           "rows": [{k: _jsonable(v) for k, v in asdict(r).items()} for r in result.rows]}
    return json.dumps(doc, indent=2)
