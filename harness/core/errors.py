"""Errors a user can fix. The CLI prints them as one line: bad input exits with code 2, an environment
error (a full disk, a read-only folder: an ``OSError`` with an errno) with code 4."""

import errno
import os
import sys
from contextlib import contextmanager


class UserError(Exception):
    """Bad input: a suite, a path, a missing dependency. The message is the whole story, one line."""


@contextmanager
def located(file, key: str):
    """Prefix a UserError raised inside with ``FILE: KEY.PATH:`` so the user knows where to look."""
    try:
        yield
    except UserError as exc:
        raise UserError(f"{file}: {key}: {exc}") from None


def warn(message: str) -> None:
    """Something a user must hear about that does not stop the command (a damaged record set aside)."""
    from harness.core.terminal import printable

    print(f"harness: warning: {printable(message)}", file=sys.stderr, flush=True)


class Unavailable(Exception):
    """This machine cannot run the cell (no CUDA device, say): the cell is skipped with this reason."""


class MissingDependency(UserError):
    """An optional package is absent; the message names the extra that installs it."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(
            f"{purpose} needs the Python package '{package}', which is not installed: "
            f"pip install 'harness[{extra}]'"
        )
        self.package = package
        self.extra = extra


def require(module: str, extra: str, purpose: str):
    """Import an optional module, or raise MissingDependency naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:
            raise
        raise MissingDependency(module.split(".")[0], extra, purpose) from None


def ensure_available(module: str, extra: str, purpose: str) -> None:
    """Fail early, without importing it, when an optional module is absent (a blocked import, i.e.
    ``sys.modules[name] = None``, counts as absent)."""
    import importlib.util
    import sys

    if module in sys.modules:
        present = sys.modules[module] is not None
    else:
        try:
            present = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:  # a submodule (optimum.quanto) of a package that is not installed
            present = False
    if not present:
        raise MissingDependency(module, extra, purpose)


#: what a user reads for the errno of an environment error
_CAUSES = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file too large",
           errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
           errno.EROFS: "read-only file system", errno.EISDIR: "is a directory", errno.ENOTDIR: "not a directory",
           errno.ENOENT: "no such file or directory", errno.EEXIST: "already exists", errno.EIO: "input/output error",
           errno.ENAMETOOLONG: "file name too long", errno.EMFILE: "too many open files"}


def describe_os_error(exc: OSError) -> str:
    """One line naming the path and the cause: ``/data/run/results.parquet: disk full (ENOSPC)``."""
    cause = _CAUSES.get(exc.errno) or (os.strerror(exc.errno) if exc.errno else str(exc)).lower()
    code = f" ({errno.errorcode[exc.errno]})" if exc.errno in errno.errorcode else ""
    path = exc.filename if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    return f"{path}: {cause}{code}" if path is not None else f"{cause}{code}"
