"""lm-eval tasks built from a local text, so accuracy can be measured offline (lm-eval's own tasks download
their data from the hub).

Two tasks, written as lm-eval task YAMLs (``dataset_path: json`` over JSON-lines files beside them) into a
folder that lm-eval's ``TaskManager(include_path=...)`` reads:

- ``harness_cloze`` (multiple choice, ``acc`` / ``acc_norm``): a passage of up to three consecutive
  sentences of a paragraph; the choices are the sentence that truly follows it and three sentences drawn
  from paragraphs far away in the text. Deterministic for a text, a count and a seed.
- ``harness_rolling`` (``loglikelihood_rolling``: word and byte perplexity, bits per byte): the text's
  paragraphs of at least :data:`MIN_ROLLING_WORDS` words, in reading order, each scored whole.

Nothing here imports lm-eval: ``harness lmeval-tasks`` writes the folder for lm-eval's own command line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import yaml

from harness.core.files import atomic_write_text, output_folder

CLOZE, ROLLING = "harness_cloze", "harness_rolling"
LOCAL_TASKS = (CLOZE, ROLLING)
#: sentences of the passage before the true continuation (fewer at a paragraph's start are not used)
PASSAGE_SENTENCES = 3
DISTRACTORS = 3
#: choices are sentences of this many words, so that length alone does not give the answer away as much
SENTENCE_WORDS = (6, 40)
#: distractors come from paragraphs at least this many paragraphs away from the passage's
FAR_PARAGRAPHS = 20
MIN_ROLLING_WORDS = 60
#: bump when the documents a text gives change, so that results say which recipe built them
VERSION = 1

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"'A-Z])")


def paragraphs(text: str) -> list[str]:
    """Blank-line separated blocks, each with its line breaks joined into single spaces."""
    return [" ".join(block.split()) for block in re.split(r"\n\s*\n", text) if block.strip()]


def sentences(paragraph: str) -> list[str]:
    """A paragraph cut after ``.``, ``!`` or ``?`` (and a closing quote) where a capital or quote follows."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(paragraph):
        out.append(paragraph[start:match.start() + len(match.group().rstrip())].strip())
        start = match.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def _fits(sentence: str) -> bool:
    return SENTENCE_WORDS[0] <= len(sentence.split()) <= SENTENCE_WORDS[1]


def cloze_docs(text: str, n: int, seed: int) -> list[dict]:
    """Up to ``n`` cloze items: {"context", "choices", "gold"}; the choices' order is shuffled by ``seed``."""
    paras = [sentences(p) for p in paragraphs(text)]
    candidates = [(p, i) for p, sents in enumerate(paras) for i in range(PASSAGE_SENTENCES, len(sents))
                  if _fits(sents[i])]
    pool = [(p, s) for p, sents in enumerate(paras) for s in sents if _fits(s)]
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(candidates), size=min(n, len(candidates)), replace=False).tolist())
    docs = []
    for index in picked:
        p, i = candidates[index]
        true = paras[p][i]
        far = [s for q, s in pool if abs(q - p) >= FAR_PARAGRAPHS and s != true]
        if len(far) < DISTRACTORS:
            continue
        wrong = [far[j] for j in rng.choice(len(far), size=DISTRACTORS, replace=False)]
        choices = [true, *wrong]
        order = rng.permutation(len(choices)).tolist()
        docs.append({"context": " ".join(paras[p][i - PASSAGE_SENTENCES:i]),
                     "choices": [choices[k] for k in order], "gold": order.index(0)})
    return docs


def rolling_docs(text: str, n: int) -> list[dict]:
    """The first ``n`` paragraphs of at least :data:`MIN_ROLLING_WORDS` words: {"text"}."""
    return [{"text": p} for p in paragraphs(text) if len(p.split()) >= MIN_ROLLING_WORDS][:n]


def _task_yaml(name: str, data: Path, body: dict) -> dict:
    return {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test", **body, "metadata": {"version": float(VERSION)}}


CLOZE_BODY = {"output_type": "multiple_choice", "doc_to_text": "{{context}}", "doc_to_choice": "{{choices}}",
              "doc_to_target": "{{gold}}",
              "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                              {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]}
ROLLING_BODY = {"output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
                "metric_list": [{"metric": m, "aggregation": a, "higher_is_better": False} for m, a in (
                    ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
                    ("bits_per_byte", "bits_per_byte"))]}


def write_task(out_dir: Path, name: str, docs: list[dict], body: dict) -> None:
    """One task: its documents as ``NAME.jsonl`` and its YAML as ``NAME.yaml``, in ``out_dir``."""
    data = out_dir / f"{name}.jsonl"
    atomic_write_text(data, "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs))
    atomic_write_text(out_dir / f"{name}.yaml", yaml.safe_dump(_task_yaml(name, data, body), sort_keys=False))


def write_local_tasks(out_dir: Path, text: str, n: int = 500, seed: int = 1234) -> Path:
    """Both tasks' YAMLs and data under ``out_dir`` (absolute data paths: lm-eval reads them from any
    folder); returns ``out_dir``, the ``include_path`` to hand lm-eval."""
    out_dir = output_folder(Path(out_dir)).resolve()
    for name, docs, body in ((CLOZE, cloze_docs(text, n, seed), CLOZE_BODY), (ROLLING, rolling_docs(text, n),
                                                                              ROLLING_BODY)):
        if not docs:
            raise ValueError(f"the text gives no {name} documents (too short, or no paragraphs)")
        write_task(out_dir, name, docs, body)
    return out_dir
