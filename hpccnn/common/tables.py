"""Tables from rows: Markdown for the .md files hpccnn writes, aligned columns for the terminal.

The one table formatter of bench, scaling, submit and report. A table is a header (a list of
headings) and rows (lists of cells, each printed with str()); `cells` makes both from records
(dicts) and a mapping of heading to the function that gives a record's cell.
"""

import math
from typing import Callable, Iterable


def cells(columns: dict[str, Callable], records: Iterable) -> tuple[list, list]:
    """(header, rows) for markdown or text: one column per item of columns, one row per record."""
    return list(columns), [[cell(record) for cell in columns.values()] for record in records]


def key(name: str, spec: str = "") -> Callable:
    """A column for cells: each record's value of name, in format spec."""
    return lambda record: format(record[name], spec)


def markdown(header: list, rows: Iterable) -> str:
    """A Markdown table, one line per row, ending in a newline."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text(header: list, rows: Iterable, gap: str = "  ") -> str:
    """Left-aligned columns as wide as their widest cell, gap between them, for a terminal."""
    table = [[str(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(gap.join(c.ljust(w) for c, w in zip(row, widths)) for row in table)


def number(value, digits: int = 4) -> str:
    """A cell for value: a float with digits decimals, any other value as it is, "-" if missing
    (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def clock(seconds: float) -> str:
    """1h02m, 4m05s, 12s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
