"""Markdown whose names cannot break it: names come from suites and results, and a model called ``a|b`` or a
reason with a line break would otherwise split a row into more columns or more rows, and a name holding
``<img onerror=...>`` would be HTML to a renderer that lets HTML through."""

from __future__ import annotations

import re


def text(value) -> str:
    """A name in running markdown: ``&`` and ``<`` as entities (no HTML, no entity of its own)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;")


def code(value) -> str:
    """A name as a code span (markup in it stays text there): fenced by more backticks than it holds in a row."""
    value = str(value)
    fence = "`" * (max(map(len, re.findall(r"`+", value)), default=0) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


def cell(value) -> str:
    """A value as the text of one table cell: :func:`text`, ``|`` escaped, line breaks as ``<br>``."""
    return re.sub(r"\r\n|\r|\n", "<br>", text(value).replace("|", "\\|"))


def table(rows: list[list], headers: list) -> str:
    """A GitHub-flavoured markdown table, every cell made safe by :func:`cell`."""
    from tabulate import tabulate

    return tabulate([[cell(v) for v in row] for row in rows], [cell(h) for h in headers], tablefmt="github",
                    disable_numparse=True)
