"""Where the harness keeps derived artifacts (assembled models, fingerprints, trained models)."""

import os
from pathlib import Path

import platformdirs

from harness.core.paths import expand_user


def cache_dir(create: bool = True) -> Path:
    """``HARNESS_CACHE`` if set (``~`` expanded), else the user cache dir; created on first use unless
    ``create`` is false (``validate`` writes nothing)."""
    path = expand_user(os.environ.get("HARNESS_CACHE") or platformdirs.user_cache_dir("harness"))
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path
