"""Where the trained Llama's bits and the word 4-gram's go on the evaluated text, by kind of token.

The word 4-gram's bits per byte is flattered against a subword model twice: a word missing from its training text
is one ``<unk>`` event however long, and whitespace is no token (where a hard-wrapped line breaks costs it
nothing). This splits both models' bits on the same text (rolling windows, as their perplexity cells score it)
into newline tokens, the tokens of words the training texts never contain, and the rest, so the two can be compared
on the text both have to predict. Reads a run of ``suites/trained.yaml`` (its ``run.json`` names the models)::

    harness run suites/trained.yaml --corpora ../shared/corpora --out trained
    python benchmarks/where_the_bits_go.py trained --corpora ../shared/corpora [--json out.json]

Each model's total agrees with its perplexity cell's ``bits_per_byte`` (checked: the script stops if not).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np

import harness.tasks  # noqa: F401  (registers the metrics the run's records name)
from harness.backends.ngram.model import NgramModel
from harness.backends.ngram.tokenizer import WORD, WordTokenizer
from harness.core.windows import rolling
from harness.results.store import read_run
from harness.sources.corpora import DatasetSpec, load_corpus

LN2 = math.log(2)


def corpus_text(source: str, base_dir: Path, corpora: Path | None) -> str:
    return load_corpus(source, DatasetSpec(source=source), base_dir, corpora).text


def llama_nll(model_dir: Path, text: str, n_ctx: int, threads: int):
    """Per-token NLL of the HF model over rolling windows, and each token's character span."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = np.array(encoded["input_ids"])
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    nll = np.zeros(len(ids))
    with torch.inference_mode():
        for w in rolling(ids, n_ctx, prefix):
            logp = torch.log_softmax(model(torch.tensor(w.input_ids)[None]).logits[0].double(), -1)
            at = w.scored_positions
            nll[w.positions] = -logp[at, torch.tensor(w.labels[at])].numpy()
    return nll, encoded["offset_mapping"]


def ngram_nll(path: Path, text: str, n_ctx: int):
    """Per-word NLL of the word n-gram over rolling windows, its tokenizer, and the ids."""
    lm = NgramModel.load(path)
    tokenizer = WordTokenizer(lm.meta["words"], lowercase=False)
    ids = tokenizer.encode(text)
    seqs, starts, scored, positions, offset = [], [], [], [], 0
    for w in rolling(ids, n_ctx, tokenizer.bos_id):
        seq = np.append(w.input_ids, w.labels[-1]) if w.labels[-1] >= 0 else w.input_ids
        seqs.append(seq)
        starts.append(np.full(len(seq), offset))
        scored.append(w.scored_positions + 1 + offset)
        positions.append(w.positions)
        offset += len(seq)
    nll = np.zeros(len(ids))
    nll[np.concatenate(positions)] = -lm.logprob(np.concatenate(seqs), np.concatenate(starts), np.concatenate(scored))
    return nll, tokenizer, ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--corpora", type=Path, help="the corpora directory (corpora: sources)")
    parser.add_argument("--base-dir", type=Path, help="where file: sources lie (default: the suite's folder)")
    parser.add_argument("--llama", default="llama-austen")
    parser.add_argument("--ngram", default="word-4")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    run = read_run(args.run)
    models, table = run.info["models"], run.results
    base_dir = args.base_dir or Path(run.info["suite_file"]).parent
    training = models[args.llama]["training"]
    cell = json.loads(table[(table.model == args.llama) & (table.metric == "bits_per_byte")].params.item())
    if cell["task"]["window"] != "rolling":
        raise SystemExit(f"{args.llama}: its perplexity cell's windows are {cell['task']['window']}, not rolling")
    text, n_ctx = corpus_text(cell["dataset"]["source"], base_dir, args.corpora), cell["task"]["n_ctx"]
    seen = Counter(w for t in training["texts"]
                   for w in WORD.findall(corpus_text(t["source"], base_dir, args.corpora)))
    unseen_chars = np.zeros(len(text) + 1, bool)
    for m in WORD.finditer(text):
        if m.group() not in seen:
            unseen_chars[m.start():m.end()] = True
    n_bytes = len(text.encode("utf-8"))

    nll, spans = llama_nll(Path(models[args.llama]["path"]), text, n_ctx, args.threads)
    newline = np.array(["\n" in text[a:b] for a, b in spans])
    unseen = np.array([bool(unseen_chars[a:b].any()) for a, b in spans]) & ~newline
    word_nll, tokenizer, ids = ngram_nll(Path(models[args.ngram]["path"]), text, n_ctx)
    unk = ids == tokenizer.unk_id

    def bits(values, mask=None):
        return float((values if mask is None else values[mask]).sum() / LN2)

    for name, values in ((args.llama, nll), (args.ngram, word_nll)):
        recorded = table[(table.model == name) & (table.metric == "bits_per_byte")].value.item()
        if abs(bits(values) / n_bytes - recorded) > 1e-3 * recorded:
            raise SystemExit(f"{name}: {bits(values) / n_bytes:.5f} bits/byte here, {recorded:.5f} in the run")
    result = {
        "text_bytes": n_bytes, "unseen_words": int(unk.sum()),
        "llama": {"bits": bits(nll), "newline": {"tokens": int(newline.sum()), "bits": bits(nll, newline)},
                  "unseen": {"tokens": int(unseen.sum()), "bits": bits(nll, unseen)},
                  "rest": {"tokens": int((~newline & ~unseen).sum()), "bits": bits(nll, ~newline & ~unseen)}},
        "ngram": {"bits": bits(word_nll), "unk": {"tokens": int(unk.sum()), "bits": bits(word_nll, unk)},
                  "rest": {"tokens": int((~unk).sum()), "bits": bits(word_nll, ~unk)}},
    }
    llama, ngram = result["llama"], result["ngram"]
    print(f"{n_bytes:,} bytes; {result['unseen_words']:,} words the training texts never contain")
    print(f"{'':32} {args.llama:>14} {args.ngram:>14}")
    print(f"{'bits per byte':32} {llama['bits'] / n_bytes:14.4f} {ngram['bits'] / n_bytes:14.4f}")
    print(f"{'bits: unseen words':32} {llama['unseen']['bits']:14,.0f} {ngram['unk']['bits']:14,.0f}"
          f"   ({llama['unseen']['bits'] / unk.sum():.1f} and {ngram['unk']['bits'] / unk.sum():.1f} bits a word)")
    print(f"{'bits: newlines':32} {llama['newline']['bits']:14,.0f} {0:14,.0f}"
          f"   ({llama['newline']['tokens']:,} newline tokens)")
    print(f"{'bits: the rest':32} {llama['rest']['bits']:14,.0f} {ngram['rest']['bits']:14,.0f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
