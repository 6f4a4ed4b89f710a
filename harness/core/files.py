"""Atomic file writes (a temp file in the same directory, then rename: a killed run never leaves a
truncated file behind, only the previous complete version or none) and JSON reads that name the file."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from harness.core.errors import UserError


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only when it returned."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from ``path``, or UserError naming the file and what it was expected to hold."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read {what} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                        ) from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected {what} (a JSON object), got {type(data).__name__}")
    return data
