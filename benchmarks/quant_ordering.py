"""Benchmark: do the published orderings of quantization methods hold on the harness's own trained model?

Reads a run of ``suites/quant-lab.yaml`` (or runs its kld cells first, ``--run``) and, for each ordering the
literature states, compares the two variants' mean KLD against the same fp32 reference on the same tokens:

- GPTQ and AWQ 4-bit (group 128) below round-to-nearest at the same bits and group size (torchao int4 through
  ``IntxWeightOnlyConfig``, group 128);
- Q4_K_M made with an importance matrix below the plain Q4_K_M;
- Q8_0 < Q4_K_M < Q2_K.

Both variants are scored window by window on the same windows, so each ordering is judged by a paired test over
the windows' mean KLDs (Wilcoxon signed-rank, two-sided): "holds", "reversed", or "not separable" (p >= alpha).
An ordering that does not hold is a finding, not a failure: this script never exits non-zero for one; it prints
the table and writes it as JSON.

    python benchmarks/quant_ordering.py RUN_DIR [--run] [--corpora DIR] [--alpha 0.05] [--out ordering.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

import harness.tasks  # noqa: F401  (registers the metrics the run's records name)
from harness.results.store import read_run

SUITE = Path(__file__).resolve().parents[1] / "suites" / "quant-lab.yaml"
#: (lower, higher, why it should be lower): model names of suites/quant-lab.yaml
ORDERINGS = [("gptq-4", "torchao-int4", "GPTQ 4-bit g128 below round-to-nearest 4-bit g128"),
             ("awq-4", "torchao-int4", "AWQ 4-bit g128 below round-to-nearest 4-bit g128"),
             ("q4_k_m-imatrix", "q4_k_m", "Q4_K_M with an importance matrix below the plain Q4_K_M"),
             ("q8_0", "q4_k_m", "Q8_0 below Q4_K_M"),
             ("q4_k_m", "q2_k", "Q4_K_M below Q2_K")]


def kld_windows(run, model: str) -> tuple[float, np.ndarray] | None:
    """A variant's mean KLD and its per-window KLDs (its kld cell's ``window_kld`` samples), or None."""
    cells = run.results[(run.results["model"] == model) & (run.results["metric"] == "kld_mean")]
    if cells.empty:
        return None
    cell = cells.iloc[0]
    samples = run.samples[(run.samples["cell_id"] == cell["cell_id"]) & (run.samples["sample"] == "window_kld")]
    return float(cell["value"]), samples.sort_values("index")["value"].to_numpy(dtype=float)


def judge(lower: tuple[float, np.ndarray], higher: tuple[float, np.ndarray], alpha: float) -> dict:
    (mean_low, win_low), (mean_high, win_high) = lower, higher
    row = {"kld_lower": mean_low, "kld_higher": mean_high, "ratio": mean_low / mean_high if mean_high else None}
    if len(win_low) != len(win_high) or len(win_low) < 6:
        return {**row, "windows": len(win_low), "p_value": None, "verdict": "no paired windows"}
    p_value = float(stats.wilcoxon(win_low, win_high).pvalue) if np.any(win_low != win_high) else 1.0
    if p_value >= alpha:
        verdict = "not separable"
    else:
        verdict = "holds" if mean_low < mean_high else "reversed"
    return {**row, "windows": len(win_low), "p_value": p_value, "verdict": verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory of suites/quant-lab.yaml")
    parser.add_argument("--run-suite", dest="run_suite", action="store_true",
                        help="run (or resume) the lab's kld cells into RUN first")
    parser.add_argument("--corpora", type=Path)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--out", type=Path, help="write the table as JSON here too")
    args = parser.parse_args()
    if args.run_suite:
        models = sorted({m for lower, higher, _ in ORDERINGS for m in (lower, higher)})
        command = [sys.executable, "-m", "harness", "run", str(SUITE), "--out", str(args.run),
                   *(["--resume"] if args.run.exists() else []),
                   *(["--corpora", str(args.corpora)] if args.corpora else []),
                   *[arg for m in models for arg in ("--only", f"{m}/*/kld")]]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=False)
    run = read_run(args.run)
    rows = []
    for lower, higher, claim in ORDERINGS:
        found = kld_windows(run, lower), kld_windows(run, higher)
        judged = judge(*found, args.alpha) if all(found) else {"verdict": "not measured"}
        rows.append({"claim": claim, "lower": lower, "higher": higher, **judged})
    for row in rows:
        figures = (f"{row['kld_lower']:.6f} vs {row['kld_higher']:.6f} (ratio {row['ratio']:.3f}, "
                   f"p {row['p_value']:.2g}, {row['windows']} windows)" if row.get("p_value") is not None else "")
        print(f"{row['verdict']:>14}  {row['claim']}: {figures}")
    if args.out:
        args.out.write_text(json.dumps({"run": str(args.run), "alpha": args.alpha, "orderings": rows}, indent=2))


if __name__ == "__main__":
    main()
