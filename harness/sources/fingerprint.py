"""sha256 of model files and corpora; file digests cached by (path, mtime, size) since models are large."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from harness.core.files import atomic_write_text
from harness.sources.cache import cache_dir

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    """Digest of a file, or of a directory as the digest of its files' (relative path, digest) list."""
    path = Path(path).resolve()
    if path.is_dir():
        lines = [f"{p.relative_to(path).as_posix()} {sha256_file(p)}"
                 for p in sorted(path.rglob("*")) if p.is_file()]
        return sha256_bytes("\n".join(lines).encode())
    stat = path.stat()
    key = f"{path}|{stat.st_mtime_ns}|{stat.st_size}"
    index_path = cache_dir() / "sha256-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    if key in index:
        return index[key]
    digest = _digest_file(path)
    # Re-read before writing so concurrent cells do not drop each other's entries.
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    index = {k: v for k, v in index.items() if not k.startswith(f"{path}|")}
    index[key] = digest
    atomic_write_text(index_path, json.dumps(index, indent=0, sort_keys=True))
    return digest
