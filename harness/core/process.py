"""Child processes that must not outlive the harness process that started them.

A cell's process runs in a session of its own (so a timeout or Ctrl-C can kill everything it started),
which also means nothing takes it down if the harness itself is killed: it would go on measuring and
write its record into a run that has ended. On Linux the child asks the kernel for SIGKILL when its
parent dies (``PR_SET_PDEATHSIG``). That request only covers a parent alive when it is made, so the
child then checks that its parent is still the process that started it.

:func:`child_command` makes the command line: ``python -m harness.core.process PARENT_PID MODULE ARGS``
arms the request before the module's own (heavy) imports, then runs the module as ``python -m`` would.
The kernel's "parent" is the thread that started the child: the harness starts cells from its main thread.

Interrupts (Ctrl-C, SIGTERM, SIGHUP) raise :class:`Interrupted` through :func:`interrupt`, except while a
child is being started (:func:`starting_child`): an exception raised inside ``subprocess.Popen``, after
the child exists but before its handle is kept, would leave a child no one knows to stop.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

PR_SET_PDEATHSIG = 1

#: signals received while a child was being started, raised once it is recorded (None: not starting one)
_held: list[int] | None = None
#: the signal last turned into :class:`Interrupted`: a C extension that checks for signals itself (Ray's
#: waits) raises a bare KeyboardInterrupt in its place
last_signal: int | None = None


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, SIGTERM (CI cancelling a job, ``timeout``) or SIGHUP (a closed terminal): stop every cell's
    process, keep the finished cells."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)


def interrupt(signum, frame) -> None:
    """The signal handler of SIGINT, SIGTERM and SIGHUP."""
    global last_signal
    last_signal = signum
    if _held is not None:
        _held.append(signum)
        return
    raise Interrupted(signum)


@contextmanager
def starting_child() -> Iterator[None]:
    """Hold interrupts while a child process is started and its handle kept; raise the first one held
    on leaving, when whoever cancels knows of the child."""
    global _held
    _held = []
    try:
        yield
    finally:
        held, _held = _held, None
    if held:
        raise Interrupted(held[0])


def die_with_parent(parent_pid: int) -> None:
    """Be killed (SIGKILL) when ``parent_pid`` dies; exit at once if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    if os.getppid() != parent_pid:  # orphaned before the request took effect
        os._exit(1)


def drop_current_directory() -> None:
    """What ``python -P`` does (3.11+), for every Python version: ``python -m`` puts the current directory first
    on ``sys.path``, so a ``./torch.py`` (or a ``./evilmod.py`` a suite names) would be imported in place of an
    installed package. Called first by each ``-m`` entry point (again by one run through another: a folder
    that ``PYTHONPATH`` names on purpose stays)."""
    chosen = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    if sys.path and sys.path[0] in ("", os.getcwd()) and os.path.abspath(sys.path[0]) not in chosen:
        del sys.path[0]


def child_command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` as a process that dies with this one."""
    return [sys.executable, "-m", "harness.core.process", str(os.getpid()), module, *args]


if __name__ == "__main__":
    drop_current_directory()
    from harness.core.library_logs import quiet_library_logs

    quiet_library_logs()
    die_with_parent(int(sys.argv[1]))
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
