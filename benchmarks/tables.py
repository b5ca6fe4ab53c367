"""The benchmarks' markdown tables and targets: numbers to about three significant digits, a ratio as its median with
the rounds' range, a spread as a percentage, and a target as a value checked against a limit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def format_number(value: Any, digits: int = 3) -> str:
    """A table cell: yes / **no** for a boolean, - for nothing, an integer as is, a float to `digits` significant
    digits (none after the point from 100 up, thousands separated from 1000 up)."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "**no**", None: "-"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value == 0:
            return "0"
        magnitude = abs(value)
        if magnitude >= 1000:
            return f"{value:,.0f}"
        if magnitude >= 100:
            return f"{value:.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers formatted to about three significant digits."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(format_number(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_cell(ratio: dict[str, float], digits: int = 2, range_digits: int | None = None) -> str:
    """A `ratio_summary` as a cell: "median (min-max)", the range to `range_digits` decimals (default `digits`)."""
    spread = digits if range_digits is None else range_digits
    return f"{ratio['median']:.{digits}f} ({ratio['min']:.{spread}f}-{ratio['max']:.{spread}f})"


def spread_cell(*summaries: dict[str, Any]) -> str:
    """The largest spread of the `summarize` results given (the noisier method's), as a percentage."""
    return f"{max(summary['spread'] for summary in summaries):.0%}"


def target(name: str, description: str, value: float, limit: float, higher_is_better: bool) -> dict[str, Any]:
    """A target check: `value` against `limit` (at least it, or at most it)."""
    met = value >= limit if higher_is_better else value <= limit
    return {"name": name, "target": description, "value": value, "limit": limit, "met": bool(met)}


def targets_table(targets: Sequence[dict[str, Any]]) -> str:
    """The markdown table of `target` checks: what, wanted, measured, met."""
    return markdown_table(
        ["target", "wanted", "measured", "met"], [[t["name"], t["target"], t["value"], t["met"]] for t in targets]
    )
