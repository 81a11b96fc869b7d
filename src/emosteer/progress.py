"""One rich progress bar for every long job (extraction, generation, scoring)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(enabled: bool, what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with ETA; yields advance(n). Nothing is shown when disabled."""
    if not enabled or total == 0:
        yield lambda k: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())
    task = bar.add_task(what, total=total)
    with bar:
        yield lambda k: bar.advance(task, k)
