"""Writes small suite files for tests, and runs them through the CLI."""

from pathlib import Path

import pandas as pd
import yaml
from conftest import SMOLLM2_PKG

from harness.cli import main


def write_suite(tmp_path: Path, suite: dict) -> Path:
    path = tmp_path / f"{suite['name']}.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def run_suite(tmp_path: Path, suite: dict) -> tuple[Path, pd.DataFrame]:
    """Run a suite into ``tmp_path/run`` (every cell must end ok or skipped) and read its results table."""
    out = tmp_path / "run"
    assert main(["run", str(write_suite(tmp_path, suite)), "--out", str(out)]) == 0
    return out, pd.read_parquet(out / "results.parquet")


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
    return write_suite(tmp_path, suite)
