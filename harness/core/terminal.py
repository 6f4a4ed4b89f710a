"""Text from a suite or a results file on its way to a terminal: names travel between people, and an ESC in a
model's name would reach the terminal as an escape sequence (retitle the window, hide or rewrite lines)."""

from __future__ import annotations

from rich.markup import escape


def printable(text: object) -> str:
    """``text`` with every control or formatting character (ESC, CR, a bidi override) written as its Python
    escape (``\\x1b``), so what prints is what the file says."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def console_text(text: object) -> str:
    """:func:`printable`, with rich markup escaped too, for ``Console.print`` and rich tables (a name holding
    ``[/red]`` would otherwise be read as markup)."""
    return escape(printable(text))
