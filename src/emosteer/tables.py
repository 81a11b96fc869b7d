"""The one markdown-table builder: every report table (experiments, circuits, compare)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

Align = Literal["", "left", "right", "center"]
_RULES = {"": "---", "left": ":---", "right": "---:", "center": ":---:"}


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]],
                   align: Sequence[Align] = ()) -> str:
    """A GitHub-style markdown table; cells are written with str().

    Args:
        header: the column names.
        rows: one sequence of cells per row, as many as the header.
        align: per column "", "left", "right" or "center" (missing columns: "").

    Example:
        markdown_table(["emotion", "share"], [["joy", "40%"], ["anger", "10%"]])
    """
    rules = [_RULES[align[i] if i < len(align) else ""] for i in range(len(header))]
    lines = [_row(header), "|" + "".join(f"{r}|" for r in rules)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _row(cells: Iterable[object]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"
