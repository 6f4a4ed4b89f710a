"""A text made to find where two tokenizers of one vocabulary part: every kind of piece a pre-tokenizer
treats apart, next to every other."""

PIECES = [
    "word", "Word", " word", "  word", "0", "42", " 7", "  0.", "   123", "\t9", "\t\t", "12345678", "3.14159",
    "1,234", "½", " ²", "Ⅻ", "١٢٣", "\n", "\n\n", "\r\n", " \r\n  ", "\n\n  0.", "😀", " 😀😀", "日本語",
    " 中文", "naïve", " café", "é", "e\u0301", " ŝ", "'s", "'S", " we'll", " I'M", "'ve", "!", " ?!", "...",
    "$5+3<=4^2~|", " (x)", "\u00a0", " \u00a0 8", "\u3000", "\u2028", "\x85", "\x0b", "--", " -- ", "_", " ",
    " " * 40,
]


def stress_text() -> str:
    """Every ordered pair of :data:`PIECES`, then leading and trailing whitespace."""
    return "  " + "".join(a + b for a in PIECES for b in PIECES) + " \n "
