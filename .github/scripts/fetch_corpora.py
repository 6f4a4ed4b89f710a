"""Write the WikiText-2 files the nightly suites read into $HARNESS_CORPORA, fetched once from the Hugging
Face hub (the job caches the folder; the harness checks each file's sha256 when it loads it)."""

import os
from pathlib import Path

from harness.sources.corpora import DatasetSpec, load_corpus

root = Path(os.environ["HARNESS_CORPORA"])
for source, name in [("hf:Salesforce/wikitext/wikitext-2-raw-v1#test", "wikitext-2-raw/wiki.test.raw"),
                     ("hf:Salesforce/wikitext/wikitext-2-v1#validation", "wikitext-2/wiki.valid.tokens")]:
    path = root / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(load_corpus(name, DatasetSpec(source=source), Path(".")).text, encoding="utf-8")
