"""Progress bars for long one-off work (demo data, training, indexing).

Bars go to stderr so ``--json`` output on stdout stays parseable; ``quiet`` turns them
off for tests and for library use.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

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
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with RichProgress(*columns, console=Console(stderr=True), transient=False) as bar:
            task_id = bar.add_task(description, total=total)
            def advance(n: float = 1) -> None:
                bar.advance(task_id, n)

            yield advance


def _ignore(n: float = 1) -> None:
    """What a quiet progress task hands out."""


QUIET = Progress(quiet=True)
