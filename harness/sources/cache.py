"""Where the harness keeps derived artifacts (assembled models, fingerprints, trained models)."""

import os
from pathlib import Path

import platformdirs


def cache_dir() -> Path:
    """``HARNESS_CACHE`` if set, else the user cache dir; created on first use."""
    path = Path(os.environ.get("HARNESS_CACHE") or platformdirs.user_cache_dir("harness"))
    path.mkdir(parents=True, exist_ok=True)
    return path
