"""One rich progress bar for every long job (extraction, generation, scoring)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(enabled: bool, what: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with ETA; yields advance(n). Nothing is shown when disabled.

    Where stderr goes to a file or a pipe (no terminal: rich would show nothing), it prints a
    line "what: done/total, elapsed, eta" every 10% or every minute instead; an in-memory
    stream (a test capturing output) gets nothing.
    """
    import sys

    terminal = sys.stderr.isatty()
    if not enabled or total == 0 or not (terminal or _writes_to_a_file()):
        yield lambda k: None
        return
    if not terminal:
        with _progress_lines(what, total) as advance:
            yield advance
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


@contextmanager
def _progress_lines(what: str, total: int) -> Iterator[Callable[[int], None]]:
    """Progress as plain lines on stderr, for logs."""
    import sys
    import time

    start = last = time.perf_counter()
    done = shown = 0

    def advance(k: int) -> None:
        nonlocal done, shown, last
        done += k
        now = time.perf_counter()
        if done >= total or done - shown >= total / 10 or now - last >= 60:
            eta = (now - start) / done * (total - done) if done else 0.0
            print(f"{what}: {done}/{total}, {now - start:.0f} s, eta {eta:.0f} s",
                  file=sys.stderr, flush=True)
            shown, last = done, now

    yield advance


def _writes_to_a_file() -> bool:
    """True when stderr is backed by a file descriptor (a log file or a pipe)."""
    import os
    import sys

    try:
        os.fstat(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False
    return True
