"""Atomic, durable file writes and JSON reads that name the file.

A file is written to a temp file in the same directory, flushed to disk (fsync), renamed over the old
one, and the directory is flushed too: a killed run or a power loss leaves the previous complete
version or the new complete one, never a truncated or empty file. Temp files are created with the
mode any new file gets (0666 less the umask), not ``mkstemp``'s 0600, so a shared results folder stays
readable to those the umask lets read it.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from harness.core.errors import UserError

Writer = Callable[[Path], None]


class Damaged(UserError):
    """A file that exists but cannot be parsed (truncated, corrupt): it may be set aside and rebuilt."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


def set_aside(path: Path) -> Path:
    """Rename a damaged file to ``NAME.damaged-TIMESTAMP`` beside it (never delete what a user may want
    to inspect or repair); returns the new path."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target, n = path.with_name(f"{path.name}.damaged-{stamp}"), 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    os.replace(path, target)
    return target


def _new_temp(path: Path) -> Path:
    """An empty file beside ``path``, created with mode 0666 & ~umask."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it); a file system that cannot (some FUSE ones) keeps the rename."""
    try:
        fsync_path(path, directory=True)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` with the file it concerns, for the one-line message (a full disk mid-write names none)."""
    if exc.errno is not None and exc.filename is None:
        return OSError(exc.errno, os.strerror(exc.errno), str(path))
    return exc


def atomic_writes(files: list[tuple[Path, Writer]]) -> None:
    """Call each ``write(tmp_path)``, make every temp file durable, then move them all into place: a
    failure in any write (a full disk) leaves every previous file exactly as it was."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, write in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = _new_temp(path)
            done.append((tmp, path))
            try:
                write(tmp)
                fsync_path(tmp)
            except OSError as exc:
                raise _named(exc, path) from exc
        for tmp, path in done:
            try:
                os.replace(tmp, path)
            except OSError as exc:  # named by the file the user asked for, not the temp file
                raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from exc
    except BaseException:
        for tmp, _ in done:
            tmp.unlink(missing_ok=True)
        raise
    for directory in dict.fromkeys(path.parent for _, path in done):
        fsync_dir(directory)


def atomic_write(path: Path, write: Writer) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` only when it returned (durably)."""
    atomic_writes([(path, write)])


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_json_object(path: Path, what: str) -> dict:
    """A JSON object from ``path``; :class:`Damaged` naming the file when it does not parse (a truncated
    copy), UserError when it cannot be read at all."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError as exc:
        raise Damaged(path, f"cannot read {what} ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Damaged(path, f"cannot read {what} ({str(exc).splitlines()[0] if str(exc) else 'empty'})") from None
    if not isinstance(data, dict):
        raise Damaged(path, f"expected {what} (a JSON object), got {type(data).__name__}")
    return data
