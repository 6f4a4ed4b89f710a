"""One entry of the harness cache (a converted model directory, a quantized GGUF, a trained n-gram, a machine
probe): built once however many runs share the cache, and rebuilt when damaged.

``cached(path, build, check)``: ``build(tmp)`` writes the entry (a file or a directory) at a temp path beside
``path`` that no other process uses; ``check(tmp)`` must pass (its result is the entry's ``value``: a loaded
model, a parsed record); the entry is made durable and renamed into place, so a reader sees all of it or
nothing. A file lock beside it (``.NAME.lock``, which the kernel drops with the process holding it) lets one
process build while the others wait, then reuse what it built. An entry that fails its check (truncated by
a full disk, corrupted by hand) is rebuilt, with one line on stderr saying so; the temp files of a builder
that was killed are removed by the next one.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from filelock import FileLock, Timeout

from harness.core.files import fsync_dir, fsync_path

T = TypeVar("T")


class Stale(Exception):
    """Raised by a check for an entry that is whole but out of date (a probe older than a day): it is
    rebuilt without the line a damaged entry gets."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    path: Path
    #: what ``check`` returned for the entry
    value: T
    #: seconds this call spent building it; None when an existing entry was used
    build_s: float | None


def cached(path: Path, build: Callable[[Path], object], check: Callable[[Path], T], *,
           refresh: bool = False) -> Entry[T]:
    """The entry at ``path``: the existing one if it passes ``check`` (and ``refresh`` is false), else one
    built now by ``build(tmp)``. ``check`` raises (anything) for an entry that cannot be used."""
    path = Path(path)
    if not refresh and os.path.lexists(path):
        try:  # the common case: no lock, since an entry is only ever published whole
            return Entry(path, check(path), None)
        except Exception:  # judged again under the lock, where it is said why
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path.with_name(f".{path.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"harness: waiting for another process to build {path}", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        if not refresh and os.path.lexists(path):
            try:
                return Entry(path, check(path), None)  # built by the process this one waited for
            except Stale:
                pass
            except Exception as exc:  # any failure of the check means: do not use it
                print(f"harness: cache entry {path} is damaged ({_problem(exc)}); rebuilding it", file=sys.stderr,
                      flush=True)
        for leftover in _temp_paths(path):  # from a builder killed mid-way: this process holds the lock
            _remove(leftover)
        return _build(path, build, check)
    finally:
        lock.release()


def announce(what: str, source: Path | str, path: Path, made_s: float | None) -> None:
    """One stderr line saying where a derived model lives and whether this run made it (users want the file)."""
    made = f"made in {made_s:.1f} s" if made_s is not None else "from the cache"
    print(f"harness: {what} of {source}: {path} ({made})", file=sys.stderr, flush=True)


def _build(path: Path, build: Callable[[Path], object], check: Callable[[Path], T]) -> Entry[T]:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    start = time.perf_counter()
    try:
        build(tmp)
        if not os.path.lexists(tmp):
            raise RuntimeError(f"building {path} wrote nothing")
        try:
            value = check(tmp)
        except Exception as exc:
            raise RuntimeError(f"{path} was built but fails its check ({_problem(exc)})") from exc
        _make_durable(tmp)
        if os.path.lexists(path):  # the damaged or stale entry: moved aside first (a folder cannot be replaced)
            old = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
            os.rename(path, old)
            _remove(old)
        os.rename(tmp, path)
    except OSError as exc:  # a full disk: named by the entry, not by its temp path
        _remove(tmp)
        raise _named_by_entry(exc, tmp, path) from exc
    except BaseException:
        _remove(tmp)
        raise
    fsync_dir(path.parent)
    return Entry(path, value, time.perf_counter() - start)


def _named_by_entry(exc: OSError, tmp: Path, path: Path) -> OSError:
    """``exc`` naming the entry (or its file) where it names the temp path or no file at all."""
    name = None if exc.filename is None else str(exc.filename)
    if exc.errno is None or (name is not None and not name.startswith(str(tmp))):
        return exc
    return OSError(exc.errno, os.strerror(exc.errno), str(path) + (name[len(str(tmp)):] if name else ""))


def _temp_paths(path: Path) -> list[Path]:
    """This entry's temp paths (``.NAME.XXXXXXXX.tmp``), not another entry's whose name starts alike."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{8}}\.tmp")
    return [p for p in path.parent.iterdir() if pattern.fullmatch(p.name)]


def _remove(path: Path) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


def _make_durable(path: Path) -> None:
    """fsync a file, or every file and folder of a directory, before it is renamed into place."""
    if not path.is_dir():
        fsync_path(path)
        return
    for folder, _, files in os.walk(path):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_dir(Path(folder))


def _problem(exc: Exception) -> str:
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__
