"""A run directory as one run owns it: a lock, so two runs never write one directory side by side (their
cells would share the machine and store each other's slowed timings as real), and taking over what a
previous run left there: damaged files set aside, a run of another suite refused, and so is a folder
that is no run directory at all (its files are someone else's) and a finished run not being resumed.

The lock is ``flock`` on a file in the run directory: the kernel drops it when the holding process
ends, however it ends (a SIGKILL included), so a killed run never leaves it stuck. The file keeps the
holder's pid and host for the message that refuses the next one.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path

from harness.core.errors import UserError, warn
from harness.core.files import Damaged, check_output, set_aside
from harness.results import store
from harness.results.records import damaged_records, read_cell_records, record_files
from harness.run.job import now

LOCK_FILE = ".harness.lock"


class RunDirLock:
    """Held for the whole run (``with RunDirLock(run_dir):``); a second holder is refused at once."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.path = run_dir / LOCK_FILE
        self._fd: int | None = None

    def __enter__(self) -> RunDirLock:
        check_output(self.path)  # a link planted in a copied run folder would have the lock truncate its target
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)  # not inherited by the cells' processes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{self.run_dir} is in use by another harness run ({holder}): wait for it to end, "
                            "or choose another --out") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        # the file stays: removing it would let a third run lock a new file while a second holds the old one
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
        return f"pid {info['pid']} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):  # the holder has not written it yet
        return "holder unknown"


def check_foreign(run_dir: Path) -> None:
    """Refuse a ``--out`` that exists, is not empty and is no run directory (it has no ``cells/``, the folder
    every run makes first): a run would overwrite its ``results.csv`` and read its ``run.json`` as its own.
    Called before anything is written there."""
    try:
        entries = sorted(p.name for p in run_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):  # a new folder; a file: ensure_writable says so
        return
    if entries and not (run_dir / "cells").is_dir():
        raise UserError(f"{run_dir}: not empty and not a run directory (it holds '{entries[0]}' and no cells/): "
                        "choose a new or empty --out")


def take_over(run_dir: Path, suite: str, resume: bool = True) -> dict:
    """Check what a previous run left in ``run_dir`` and return its ``run.json`` (``{}`` if none).

    A run of another suite is refused, before anything is written, and so is a run of this suite that is
    not resumed (its records would mix with the new ones). A damaged ``run.json`` or cell record (a
    truncated copy, a disk that filled, a record that is not the harness's) is named, set aside as
    ``NAME.damaged-TIMESTAMP`` and left out, so its cell runs again on ``--resume``; this happens before
    ``run.json`` is rewritten.
    """
    run_json = run_dir / "run.json"
    previous, damaged = {}, damaged_records(run_dir)
    if run_json.exists():
        try:
            previous = store.read_run_json(run_json)
        except Damaged as exc:
            damaged.insert(0, exc)
    if previous:
        others = {previous.get("suite")} - {suite, None}
    else:
        broken = {d.path for d in damaged}
        others = {r.cell.get("suite") for r in read_cell_records(run_dir, skip=broken)} - {suite, None}
    if others:
        raise UserError(f"{run_dir} holds a run of suite '{sorted(others)[0]}', not '{suite}': "
                        "choose another --out")
    if not resume and (run_json.exists() or record_files(run_dir)):
        raise UserError(f"{run_dir} holds a run of suite '{suite}' already: add --resume to finish it with "
                        "today's inputs, or choose another --out")
    for exc in damaged:
        aside = set_aside(exc.path)
        then = "the cell counts as not run" if exc.path.parent.name == "cells" else "it is written anew"
        warn(f"{exc}; set aside as {aside.name}: {then}")
    return previous
