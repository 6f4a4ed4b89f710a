"""Where the harness keeps derived artifacts (assembled models, fingerprints, trained models)."""

import os
from pathlib import Path

import platformdirs


def cache_dir(create: bool = True) -> Path:
    """``HARNESS_CACHE`` if set (``~`` expanded), else the user cache dir; created on first use unless
    ``create`` is false (``validate`` writes nothing)."""
    path = Path(os.environ.get("HARNESS_CACHE") or platformdirs.user_cache_dir("harness")).expanduser()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
