"""A derivation (training a model, quantizing one) run as a child process of the harness: its memory stays out
of the cell's peak RSS, it dies with the run that waits for it (:func:`harness.core.process.child_command`), and
its errors come back as the parent's own: bad input as a :class:`UserError`, an environment error (a full disk)
as an ``OSError``, each from the child's last stderr line; anything else (a quantization library that raises) as
:class:`ChildFailed`, its output kept in a file of the cache. The child draws its progress on the shared stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from harness.core.errors import UserError
from harness.core.process import child_command

#: how the child reports bad input and an environment error to its parent (exit code, last stderr line's prefix)
EXIT_BAD_INPUT, BAD_INPUT = 2, "harness: error: "
EXIT_ENVIRONMENT, ENVIRONMENT = 4, "harness: os error: "


class ChildFailed(RuntimeError):
    """A child that failed otherwise (a library raised inside it): what it was making cannot be used, and the run
    says so for the cells that need it; the child's output (its traceback) is in a file named in the message."""


def run_child(module: str, args: list[str], what: str, stdin: str | None = None, echo: bool = True) -> None:
    """``python -m module ARGS`` (``stdin``: its input), waited for; its failure raised here, naming ``what``.
    Its stderr is shown after it (``echo=False``: not at all: the libraries' import chatter)."""
    done = subprocess.run(child_command(module, *args), stderr=subprocess.PIPE, text=True, input=stdin)
    last = next((line for line in reversed(done.stderr.splitlines()) if line.strip()), "").strip()
    if done.returncode == EXIT_BAD_INPUT and last.startswith(BAD_INPUT):
        raise UserError(last.removeprefix(BAD_INPUT))
    if done.returncode == EXIT_ENVIRONMENT and last.startswith(ENVIRONMENT):
        number, filename = json.loads(last.removeprefix(ENVIRONMENT))
        raise OSError(number, os.strerror(number), filename)
    if done.returncode != 0:
        raise ChildFailed(f"{what} failed (exit code {done.returncode}): {last} ({_keep_output(module, done.stderr)})")
    if echo:
        sys.stderr.write(done.stderr)


def _keep_output(module: str, stderr: str) -> str:
    """The failed child's stderr saved under the cache's ``logs/``; says where (or why it could not be saved)."""
    from harness.core.files import atomic_write_text
    from harness.sources.cache import cache_dir

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = cache_dir() / "logs" / f"{module.rsplit('.', 1)[-1]}-failed-{stamp}-{os.getpid()}.txt"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, stderr)
    except (OSError, UserError) as exc:
        return f"its output could not be saved: {exc}"
    return f"its output is in {path}"


def child_main(main: Callable[[], None]) -> None:
    """The child's side: run ``main``, reporting bad input and environment errors as :func:`run_child` reads them."""
    try:
        main()
    except UserError as exc:  # the parent raises it again from this line
        print(f"{BAD_INPUT}{exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except OSError as exc:  # a full disk, a read-only cache: errno and path, for the parent's OSError
        if exc.errno is None:
            raise
        print(f"{ENVIRONMENT}{json.dumps([exc.errno, exc.filename])}", file=sys.stderr)
        sys.exit(EXIT_ENVIRONMENT)


def progress(*fields) -> Progress:
    """A rich progress display on stdout (the parent's terminal): description, bar, counts, times, ``fields``; on
    a log file, where rich would draw nothing until the end (an hour of training), a plain line a minute."""
    console = Console(file=sys.stdout)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), *(TextColumn(f"{{task.fields[{name}]}}") for name in fields))
    return (Progress if console.is_terminal else LoggedProgress)(*columns, console=console)


class LoggedProgress(Progress):
    """Progress that prints its first update, one a minute after, and the last, as plain lines."""

    interval_s = 60.0
    _said = -interval_s

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        task = next(t for t in self.tasks if t.id == task_id)
        now = time.monotonic()
        if now - self._said < self.interval_s and not task.finished:
            return
        self._said = now
        count = f"{task.completed:.0f}" + (f"/{task.total:.0f}" if task.total is not None else "")
        shown = " ".join(str(value) for value in task.fields.values() if value)
        self.console.print(f"{task.description}: {count} in {task.elapsed or 0:.0f} s {shown}".rstrip(),
                           highlight=False, markup=False, soft_wrap=True)
