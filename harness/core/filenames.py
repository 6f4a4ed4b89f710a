"""Names from suites and results (metrics, tasks, models, runs) as file names and element ids.

Result folders and suites travel between people and CI jobs, so a name is data, never a path: a metric
called ``../../x`` must not lead a page out of its folder, and two names must never share one file (tasks
``p 1`` and ``p_1``), whatever order they come in.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

#: a name used as it is: letters, digits, ``_.-``, starting with a letter or digit (no ``..``, no hidden file)
PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}")
#: names Windows reserves whatever the extension
RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def _plain(name: str) -> bool:
    return PLAIN.fullmatch(name) is not None and name.split(".")[0].upper() not in RESERVED


def _stem(name: str) -> str:
    """A plain name itself; any other its safe characters (at most 60) and the first 8 hex digits of its
    sha256, so that names differing only in what was dropped stay apart."""
    if _plain(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    kept = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:60]
    return f"{kept}-{digest}" if kept else digest


def file_stems(names: Sequence[str]) -> list[str]:
    """A file stem for each of ``names`` (one per entry, in order), no two equal even ignoring case (macOS and
    Windows folders): plain names keep themselves; a stem met again (the same name twice, or a name crafted
    to meet another's) takes ``-2``, ``-3``, ... in the order of the names, sorted, so the outcome does not
    depend on the order they were given in."""
    stems: list[str] = [""] * len(names)
    taken: set[str] = set()
    for i in sorted(range(len(names)), key=lambda i: (not _plain(names[i]), names[i], i)):
        base = stem = _stem(names[i])
        n = 1
        while stem.lower() in taken:
            n += 1
            stem = f"{base}-{n}"
        taken.add(stem.lower())
        stems[i] = stem
    return stems


def stem_map(names: Sequence[str]) -> dict[str, str]:
    """Each distinct name's file stem (:func:`file_stems` of the names without repeats)."""
    unique = list(dict.fromkeys(names))
    return dict(zip(unique, file_stems(unique), strict=True))
