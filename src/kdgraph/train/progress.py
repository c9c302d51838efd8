"""Run messages and a progress bar for epochs (rich): the bar is silent when quiet or when stderr is not a terminal,
and lines written to a file or a pipe are never wrapped, so a log keeps one line per message."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["Reporter", "epoch_line"]


class Reporter:
    """Prints run messages and drives one progress bar per epoch."""

    def __init__(self, quiet: bool = False, console: Optional[Console] = None):
        self.quiet = quiet
        # rich wraps at 80 columns when stderr is no terminal, splitting a label from its value in a log file
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
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


def epoch_line(row: dict[str, Any], weights: dict[str, float]) -> str:
    """``epoch 2: ce 0.4123  0.9×logits 0.2345  pair:block3->layer3 0.0812  total 0.7066  train 85.00%  val 84.38%
    1234 img/s``: each loss term unweighted, with its weight in front when it is not 1, so that ``total`` (the
    weighted sum that is minimised) can be read off the line."""
    terms = []
    for key, value in row.items():
        if key.startswith("loss/"):
            label = key[5:]
            weight = weights.get(label, 1.0)
            terms.append(f"{'' if weight == 1 else f'{weight:g}×'}{label} {value:.4f}")
    stage = f" [{row['stage']}]" if "stage" in row else ""
    names = {"val_top1": "val", "val_agree": "agree", "val_knn": "val k-NN", "val_linear_probe": "val linear probe",
             "val_map": "val mAP"}
    evals = "".join(f"  {name} {row[k]:.2%}" for k, name in names.items() if k in row)
    evals += f"  kl {row['val_kl']:.4f}" if "val_kl" in row else ""
    train = f"  train {row['train_top1']:.2%}" if "train_top1" in row else ""
    return f"epoch {row['epoch']}{stage}: {'  '.join(terms)}{train}{evals}  {row['images_per_s']:.0f} img/s"
