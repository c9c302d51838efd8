"""A progress bar for epochs (rich), silent when quiet or when stderr is not a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator, Optional

from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["Reporter"]


class Reporter:
    """Prints run messages and drives one progress bar per epoch."""

    def __init__(self, quiet: bool = False, console: Optional[Console] = None):
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
        self.show_bar = not quiet and sys.stderr.isatty()

    def info(self, message: str | Text) -> None:
        """Print ``message`` as plain text (a stage name ``[warm]`` or a path is no rich markup); a ``Text`` keeps
        its styles."""
        if not self.quiet:
            self.console.print(message, markup=False)

    def warn(self, message: str) -> None:
        self.console.print(Text.assemble(("warning:", "yellow"), " ", message))

    @contextmanager
    def epoch_bar(self, description: str, total: int) -> Iterator["_Bar"]:
        if not self.show_bar:
            yield _Bar(None, None)
            return
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        with progress:
            task = progress.add_task(description, total=total, status="")
            yield _Bar(progress, task)


class _Bar:
    def __init__(self, progress: Optional[Progress], task: Optional[int]):
        self.progress, self.task = progress, task

    def advance(self, n: int = 1, status: Optional[str] = None) -> None:
        if self.progress is not None:
            fields = {} if status is None else {"status": status}
            self.progress.update(self.task, advance=n, **fields)
