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
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


#: what a file that is neither a regular file nor a folder is, for the one-line refusal
_KINDS = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file")]


def check_output(path: Path, folder: bool = False) -> None:
    """Refuse (UserError) an output path that is not what the harness may replace or write into: a file output
    must be a regular file or a new path, a folder output a folder or a new path. A symbolic link is never
    followed (it could point anywhere, /dev/full included), a FIFO or a device is never replaced."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise UserError(f"{path}: cannot be created, a part of its path is a file, not a folder") from None
    if stat.S_ISDIR(mode) if folder else stat.S_ISREG(mode):
        return
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    raise UserError(f"{path}: is {kind}; expected {'a folder' if folder else 'a regular file'} or a new path")


def output_folder(path: Path) -> Path:
    """``path`` as a folder to write into, created if new; refused if it is anything else (a symbolic link
    included, so a link planted in a copied run folder cannot send its files elsewhere)."""
    check_output(path, folder=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def _named(exc: OSError, path: Path, tmp: Path | None = None) -> OSError:
    """``exc`` naming the file the user asked for where it names the temp file or none (a full disk mid-write);
    an error about another file (one a writer reads) keeps its name."""
    if exc.errno is None or exc.filename not in (None, str(tmp), tmp):
        return exc
    return OSError(exc.errno, os.strerror(exc.errno), str(path))


def atomic_writes(files: list[tuple[Path, Writer]]) -> None:
    """Call each ``write(tmp_path)``, make every temp file durable, then move them all into place: a
    failure in any write (a full disk) leaves every previous file exactly as it was. A target that is not a
    regular file (a FIFO, a device, a symbolic link) is refused, never replaced. Errors name the target."""
    done: list[tuple[Path, Path]] = []
    try:
        for path, write in files:
            path = Path(path)
            check_output(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                tmp = _new_temp(path)
            except OSError as exc:
                raise _named(exc, path, exc.filename) from exc
            done.append((tmp, path))
            try:
                write(tmp)
                fsync_path(tmp)
            except OSError as exc:
                raise _named(exc, path, tmp) from exc
        for tmp, path in done:
            check_output(path)  # again just before the rename: it may have appeared since
            try:
                os.replace(tmp, path)
            except OSError as exc:
                raise _named(exc, path, exc.filename) from exc
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
    copy), UserError when it is missing; OSError (an environment error) when it cannot be read."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.strerror or type(exc).__name__})") from None
    # permission denied, an I/O error: the environment's (exit 4), not a file to set aside
    except UnicodeDecodeError as exc:
        raise Damaged(path, f"cannot read {what} ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise Damaged(path, f"cannot read {what} ({str(exc).splitlines()[0] if str(exc) else 'empty'})") from None
    if not isinstance(data, dict):
        raise Damaged(path, f"expected {what} (a JSON object), got {type(data).__name__}")
    return data


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A private folder ``PREFIX<pid>-XXXX`` in the system's temporary folder, removed when the block ends.
    A process killed outright (a cell over its time, a cancelled cluster task) cannot remove its own, so
    first the folders of this prefix and user whose process is gone are removed."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{prefix}*-*"):
        pid = old.name[len(prefix):].partition("-")[0]
        try:
            mine = old.lstat().st_uid == os.getuid() and old.is_dir() and not old.is_symlink()
        except OSError:
            continue
        if mine and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True
