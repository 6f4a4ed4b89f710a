"""How a figure is written in reports, tables and messages: as many digits as a comparison needs, thousands
grouped, the standard error beside it when there is one."""

from __future__ import annotations

import math


def fmt_value(value: float, stderr: float | None = None) -> str:
    """Four significant digits, or whole numbers from 1000 up; ``± stderr`` in two."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if stderr is not None and not math.isnan(stderr):
        text += f" ± {stderr:.2g}"
    return text
