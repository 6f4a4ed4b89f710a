"""Benchmark: building an order-8 word n-gram model, the harness's arrays against the textbook dicts.

The textbook approach (as popular tutorials teach it): for every position and every order up to n,
a Python dict maps the string of the previous words to a dict of next-word counts. Both builds run
in fresh processes on the same text (the four Austen novels other than Persuasion) with the same
tokenization, reading and tokenizing included. Also measures the harness's query speed at order 5
on Persuasion on one core.

What is compared (issue 3 asks for a build >= 20x faster and a peak RSS >= 30x smaller):
- speed: wall-clock seconds of each build, and its CPU seconds (steadier on a shared machine); the
  query's verdict uses wall-clock time (best of 20), its rate per CPU second shown beside it;
- memory, two ways, both from the kernel's ru_maxrss (peak resident set):
  * whole process: peak RSS of each process. The harness's process holds Python with numpy
    imported before it builds anything (~28 MiB, about 1/30 of the textbook build's peak), so this
    ratio cannot reach 30x whatever the build does;
  * the build's own memory: peak RSS minus the RSS just before the build (interpreter and imports
    loaded, nothing read yet). This is what the build itself costs, and where the 30x is met.

    python benchmarks/ngram_build.py --corpora ../shared/corpora
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

TRAIN = ["prideprejudice.txt", "sensesensibility.txt", "mansfieldpark.txt", "northangerabbey.txt"]
EVAL = "persuasion.txt"

NAIVE = r"""
import json, re, resource, sys, time
from collections import defaultdict
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
order, paths = int(sys.argv[1]), sys.argv[2:]
before = rss()
start, cpu = time.perf_counter(), time.process_time()
text = "\n".join(open(p, encoding="utf-8").read() for p in paths)
words = re.findall(r"\w+|[^\w\s]", text)
model = defaultdict(lambda: defaultdict(int))
for i in range(len(words)):
    for k in range(1, order + 1):
        if i - k + 1 < 0:
            break
        model[" ".join(words[i - k + 1:i])][words[i]] += 1
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"build_s": seconds, "cpu_s": cpu, "peak_rss_mb": rss(), "rss_before_mb": before,
                  "tokens": len(words), "prefixes": len(model)}))
"""

HARNESS = r"""
import json, resource, sys, time
import numpy as np
from harness.backends.ngram.build import build, training_stream
from harness.backends.ngram.tokenizer import WordTokenizer
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
order, paths = int(sys.argv[1]), sys.argv[2:]
before = rss()
start, cpu = time.perf_counter(), time.process_time()
texts = (open(p, encoding="utf-8").read() for p in paths)
tok, encoded = WordTokenizer.train(texts, lowercase=False, min_count=1)
stream = training_stream(encoded, tok.bos_id, tok.vocab_size)
del encoded
lm = build(stream, order, tok.vocab_size, tok.bos_id)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
print(json.dumps({"build_s": seconds, "cpu_s": cpu, "peak_rss_mb": rss(), "rss_before_mb": before,
                  "tokens": int(len(stream)), "model_mb": lm.n_bytes() / 2**20,
                  "stored_rows": [int(len(l.raw)) for l in lm.levels]}))
"""

QUERY = r"""
import json, sys, time
import numpy as np
from harness.backends.ngram.build import build, training_stream
from harness.backends.ngram.tokenizer import WordTokenizer
order, eval_path, paths = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
texts = [open(p, encoding="utf-8").read() for p in paths]
tok, encoded = WordTokenizer.train(texts, lowercase=False, min_count=1)
stream = training_stream(encoded, tok.bos_id, tok.vocab_size)
lm = build(stream, order, tok.vocab_size, tok.bos_id)
ev = np.concatenate([[tok.bos_id], tok.encode(open(eval_path, encoding="utf-8").read())])
starts, scored = np.zeros(len(ev), np.int64), np.arange(1, len(ev))
best = best_cpu = float("inf")
for _ in range(20):
    t, cpu = time.perf_counter(), time.process_time()
    logp = lm.logprob(ev, starts, scored)
    best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - cpu)
print(json.dumps({"scored_tokens": len(scored), "best_s": best, "tok_per_s": len(scored) / best,
                  "tok_per_cpu_s": len(scored) / best_cpu, "ppl": float(np.exp(-logp.mean()))}))
"""


def run(code: str, args: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True,
                         env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpora", type=Path, default=Path(os.environ.get("HARNESS_CORPORA", "../shared/corpora")))
    parser.add_argument("--order", type=int, default=8)
    parser.add_argument("--query-order", type=int, default=5)
    args = parser.parse_args()
    paths = [str(args.corpora / "janeausten" / name) for name in TRAIN]
    naive = run(NAIVE, [str(args.order), *paths])
    ours = run(HARNESS, [str(args.order), *paths])
    query = run(QUERY, [str(args.query_order), str(args.corpora / "janeausten" / EVAL), *paths])
    runs = {"textbook dicts": naive, "harness arrays": ours}
    own = {name: r["peak_rss_mb"] - r["rss_before_mb"] for name, r in runs.items()}
    print(f"order {args.order}, {ours['tokens']:,} training tokens (4 Austen novels)")
    print(f"  {'':15s} {'build s':>8s} {'CPU s':>7s} {'peak RSS':>9s} {'before':>7s} {'own':>7s}  (MiB)")
    for name, r in runs.items():
        print(f"  {name:15s} {r['build_s']:8.2f} {r['cpu_s']:7.2f} {r['peak_rss_mb']:9.1f} "
              f"{r['rss_before_mb']:7.1f} {own[name]:7.1f}")
    ratios = {"build wall time": (naive["build_s"] / ours["build_s"], 20),
              "build CPU time": (naive["cpu_s"] / ours["cpu_s"], 20),
              "peak RSS, whole process": (naive["peak_rss_mb"] / ours["peak_rss_mb"], 30),
              "peak RSS, the build's own (peak - before)": (own["textbook dicts"] / own["harness arrays"], 30)}
    for what, (ratio, target) in ratios.items():
        print(f"  {what:42s} {ratio:5.1f}x  (target {target}x: {'met' if ratio >= target else 'NOT met'})")
    print(f"  model arrays {ours['model_mb']:.1f} MiB, stored rows per order {ours['stored_rows']}")
    print(f"query, order {args.query_order}, one core: {query['scored_tokens']:,} Persuasion tokens in "
          f"{query['best_s'] * 1000:.0f} ms -> {query['tok_per_s'] / 1e6:.2f} M scored tok/s "
          f"({query['tok_per_cpu_s'] / 1e6:.2f} M per CPU second; target 1 M: "
          f"{'met' if query['tok_per_s'] >= 1e6 else 'NOT met'}; ppl {query['ppl']:.1f})")


if __name__ == "__main__":
    main()
