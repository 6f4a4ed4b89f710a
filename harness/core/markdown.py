"""Markdown tables whose cells cannot break them: names come from suites, and a model called ``a|b`` or a
reason with a line break would otherwise split a row into more columns or more rows."""

from __future__ import annotations

import re


def cell(value) -> str:
    """A value as the text of one table cell: ``|`` escaped, line breaks as ``<br>``."""
    return re.sub(r"\r\n|\r|\n", "<br>", str(value).replace("|", "\\|"))


def table(rows: list[list], headers: list) -> str:
    """A GitHub-flavoured markdown table, every cell made safe by :func:`cell`."""
    from tabulate import tabulate

    return tabulate([[cell(v) for v in row] for row in rows], [cell(h) for h in headers], tablefmt="github",
                    disable_numparse=True)
