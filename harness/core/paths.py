"""Paths a user types (on the command line, in a suite, in an environment variable)."""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import UserError


def expand_user(path: str | Path) -> Path:
    """``~`` and ``~USER`` expanded as a shell would; an unknown user (``~nosuchuser/x``) is bad input, one line,
    where :meth:`Path.expanduser` raises RuntimeError."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        raise UserError(f"{path}: cannot expand '{Path(path).parts[0]}': no such user (or no home directory)"
                        ) from None
