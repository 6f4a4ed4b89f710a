"""Writes small suite files for tests."""

from pathlib import Path

import yaml
from conftest import SMOLLM2_PKG


def smollm2_suite(tmp_path: Path, name="t", tasks=None, matrix=None, **extra) -> Path:
    suite = {
        "name": name,
        "models": {"smollm2": {"gguf": SMOLLM2_PKG}},
        "backends": {"gguf": {"type": "llamacpp", "n_threads": 2}},
        "datasets": {"docs": {"source": "builtin:stdlib-docs#test"}},
        "tasks": tasks or {"ppl": {"type": "perplexity", "dataset": "docs", "n_ctx": 128, "max_tokens": 512}},
        "matrix": matrix or [{"model": "smollm2", "backend": "gguf", "task": "ppl"}],
        **extra,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path
