"""Versions of the files in a run directory (``run.json`` and ``cells/*.json``), asv-style: every file says
which version wrote it, readers migrate older versions on the fly and refuse newer ones.

Version history (also in docs/results.md, "Versions"):

- 0: files written before versioning (harness 0.1.0 up to 2026-12): no ``schema`` key. A cell record
  holds cell_id, cell, params, status, reason, measurements, samples, resolved, fingerprints,
  started_at, ended_at, duration_s (round for an interleaved round); ``run.json`` holds run_id, suite,
  suite_file, overrides, environment, started_at, ended_at, models, datasets, cells, timeout_s, gates.
- 1: the same fields plus ``"schema": 1``. Version 0 reads as 1 unchanged.
"""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import UserError
from harness.core.files import Damaged

SCHEMA = 1


def migrate(data: dict, path: Path) -> dict:
    """``data`` (a cell record or run.json) brought to :data:`SCHEMA`; UserError for a newer version,
    :class:`Damaged` (set aside on resume, like a truncated file) for one that is not a version number."""
    version = data.get("schema", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise Damaged(path, f"schema: expected a version number, got {version!r}")
    if version > SCHEMA:
        raise UserError(f"{path}: written by a newer harness (results schema {version}; this harness reads up "
                        f"to {SCHEMA}): upgrade harness to read it")
    return {**data, "schema": SCHEMA}  # 0 -> 1 adds only the version
