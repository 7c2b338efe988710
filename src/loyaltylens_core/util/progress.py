"""Progress for long one-off work (demo data, training, indexing, batches).

On a terminal: a bar with rate and time remaining. Anywhere else (CI logs, a pipe, a
container): a plain line every ``LOYALTYLENS_PROGRESS_INTERVAL`` seconds (default 10) with
done/total, rate and ETA, so a 10-minute index never looks hung. Everything goes to stderr
so ``--json`` output on stdout stays parseable; ``quiet`` turns it off for tests and
library use.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Iterator, TextIO

Advance = Callable[[float], None]


class Progress:
    """Hands out progress tasks; a quiet instance hands out no-ops."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    @contextlib.contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Advance]:
        if self.quiet:
            yield _ignore
            return
        if not sys.stderr.isatty():
            with _lines(description, total, sys.stderr, _interval()) as advance:
                yield advance
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
        with RichProgress(*columns, console=Console(stderr=True), transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            def advance(n: float = 1) -> None:
                bar.advance(task_id, n)

            yield advance


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("LOYALTYLENS_PROGRESS_INTERVAL", "10")))
    except ValueError:
        return 10.0


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


@contextlib.contextmanager
def _lines(description: str, total: float | None, out: TextIO, interval: float) -> Iterator[Advance]:
    """Progress as plain lines: one per ``interval`` seconds while work advances, one at the end."""
    started = last = time.monotonic()
    done = 0.0

    def line(now: float) -> str:
        elapsed = now - started
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{description}: {done:,.0f}" + (f"/{total:,.0f} ({done / total:.0%})" if total else "")
        text += f", {rate:,.0f}/s, {_duration(elapsed)} elapsed"
        if total and rate > 0 and done < total:
            text += f", ETA {_duration((total - done) / rate)}"
        return text

    def advance(n: float = 1) -> None:
        nonlocal done, last
        done += n
        now = time.monotonic()
        if now - last >= interval and (not total or done < total):
            last = now
            print(line(now), file=out, flush=True)

    yield advance
    print(line(time.monotonic()) + (" done" if not total or done >= total else " stopped"), file=out, flush=True)


def _ignore(n: float = 1) -> None:
    """What a quiet progress task hands out."""


QUIET = Progress(quiet=True)
