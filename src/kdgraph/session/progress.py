"""Run messages and progress bars (rich): the bars are silent when quiet or when stderr is not a terminal, and lines
written to a file or a pipe are never wrapped, so a log keeps one line per message. On a terminal an epoch line is
wrapped between its fields, never inside one (a term's name stays beside its value).

A bar is shown for every phase that takes time: each epoch, and before the first one the teachers' test top-1 and
the teacher cache pass. :class:`RunClock` estimates the time left in the whole run, the baseline included.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

from rich.cells import cell_len
from rich.console import Console
from rich.text import Text
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["Reporter", "Bar", "RunClock", "epoch_line", "epoch_fields", "epoch_legend", "duration", "join_fields"]


def duration(seconds: float) -> str:
    """``45s``, ``3m05s``, ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class RunClock:
    """The time left in a run, from the training steps still to do and the pace of the steps done (the evaluations
    and checkpoints between epochs included, so the pace is wall time per step).

    A run has parts, each with its own pace: the distilled student, then its baseline. A part not started yet (the
    baseline, ``plan``) is counted at the pace of the part before it until it has steps of its own. ``now`` is the
    clock read (a test passes its own)."""

    def __init__(self, now: Callable[[], float] = time.perf_counter):
        self.now = now
        self.parts: dict[str, dict[str, float]] = {}  # name -> steps left, steps done, start time (None: planned)
        self.current: Optional[str] = None

    def plan(self, name: str, steps: int) -> None:
        """A part that will run later (``steps`` in all), counted in :meth:`left` before it begins."""
        self.parts.setdefault(name, {"left": steps, "done": 0, "start": None})

    def begin(self, name: str, steps: int) -> None:
        """Part ``name`` starts now with ``steps`` steps left; steps counted from here on are its own."""
        self.parts[name] = {"left": steps, "done": 0, "start": self.now()}
        self.current = name

    def advance(self, steps: int = 1) -> None:
        """``steps`` steps of the current part done (none begun: nothing is counted)."""
        if self.current is not None:
            part = self.parts[self.current]
            part["left"], part["done"] = max(0, part["left"] - steps), part["done"] + steps

    def _pace(self, name: str) -> Optional[float]:
        part = self.parts[name]
        return (self.now() - part["start"]) / part["done"] if part["done"] else None

    def left(self) -> Optional[tuple[float, bool]]:
        """``(seconds left, whether a part still to come counts in them)``, or None before any step was timed."""
        known = [p for p in (self._pace(n) for n in self.parts) if p is not None]
        if not known:
            return None
        pace, total, later = known[0], 0.0, False
        for name, part in self.parts.items():
            pace = self._pace(name) or pace
            total += part["left"] * pace
            later = later or (name != self.current and part["start"] is None and part["left"] > 0)
        return total, later

    def describe(self) -> Optional[str]:
        """``1m05s left (with the baseline)``, or None when nothing is left or nothing was timed yet."""
        left = self.left()
        if left is None or not any(part["left"] for part in self.parts.values()):
            return None
        return f"{duration(left[0]) if left[0] >= 1 else '<1s'} left" + (" (with the baseline)" if left[1] else "")


class Reporter:
    """Prints run messages and drives the progress bars; ``clock`` times the run."""

    def __init__(self, quiet: bool = False, console: Optional[Console] = None):
        self.quiet = quiet
        # rich wraps at 80 columns when stderr is no terminal, splitting a label from its value in a log file
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=not sys.stderr.isatty())
        self.show_bar = not quiet and sys.stderr.isatty()
        self.clock = RunClock()

    def info(self, message: str | Text) -> None:
        """Print ``message`` as plain text (a stage name ``[warm]`` or a path is no rich markup); a ``Text`` keeps
        its styles."""
        if not self.quiet:
            self.console.print(message, markup=False)

    def fields(self, parts: list[str]) -> None:
        """One record of fields (an epoch line): on one line in a log; on a terminal narrower than the line, wrapped
        between fields, the next lines indented."""
        if self.quiet:
            return
        width = None if self.console.soft_wrap else self.console.width
        self.console.print("\n".join(join_fields(parts, width)), markup=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(Text.assemble(("warning:", "yellow"), " ", message))

    @contextmanager
    def epoch_bar(self, description: str, total: int) -> Iterator["Bar"]:
        """A bar over training steps: each step advances the run clock, and the status shows the run's time left."""
        with self._bar(description, total, self.clock) as bar:
            yield bar

    @contextmanager
    def phase_bar(self, description: str, total: Optional[int] = None) -> Iterator["Bar"]:
        """A bar over a phase that is not training (the teachers' top-1, the teacher cache): ``total`` may be given
        later (``Bar.set_total``)."""
        with self._bar(description, total, None) as bar:
            yield bar

    @contextmanager
    def _bar(self, description: str, total: Optional[int], clock: Optional[RunClock]) -> Iterator["Bar"]:
        if not self.show_bar:
            yield Bar(None, None, clock)
            return
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        with progress:
            task = progress.add_task(description, total=total, status="")
            yield Bar(progress, task, clock)


class Bar:
    """One progress bar (a silent one when bars are off); with a clock, every step advanced is a training step."""

    def __init__(self, progress: Optional[Progress], task: Optional[int], clock: Optional[RunClock]):
        self.progress, self.task, self.clock = progress, task, clock

    def set_total(self, total: int) -> None:
        if self.progress is not None:
            self.progress.update(self.task, total=total)

    def skip(self, n: int) -> None:
        """``n`` steps shown as done that this command did not do (resuming in an epoch's middle)."""
        if self.progress is not None:
            self.progress.update(self.task, advance=n)

    def advance(self, n: int = 1, status: Optional[str] = None) -> None:
        if self.clock is not None:
            self.clock.advance(n)
        if self.progress is not None:
            fields = {}
            if status is not None:  # the run's time left, short: a bar has little room (the epoch line says more)
                left = self.clock.describe() if self.clock is not None else None
                fields["status"] = status + (f"  run: {left.split(' (')[0]}" if left else "")
            self.progress.update(self.task, advance=n, **fields)


def join_fields(parts: list[str], width: Optional[int] = None) -> list[str]:
    """``parts`` joined by two spaces (one before a part that starts with ``+`` or ``=``), as lines of at most
    ``width`` cells where a part fits (None: one line); lines after the first are indented by four spaces."""
    lines = [parts[0]] if parts else [""]
    for part in parts[1:]:
        sep = " " if part[:2] in ("+ ", "= ") or lines[-1].endswith(":") else "  "
        if width is not None and cell_len(lines[-1] + sep + part) > width:
            lines.append("    " + part)
        else:
            lines[-1] += sep + part
    return lines


_EVALS = {"val_top1": "val", "val_agree": "agree", "val_knn": "val k-NN", "val_linear_probe": "val linear probe",
          "val_map": "val mAP"}


def epoch_fields(row: dict[str, Any], weights: dict[str, float], left: Optional[str] = None) -> list[str]:
    """The fields of an epoch line: each loss term as it enters the total (weight × value, the weights of this
    epoch: warm-ups included), so that the terms add up to ``total``; train and val scores; throughput; ``left``
    (the run's time left) when given."""
    terms = []
    for key, value in row.items():
        if key.startswith("loss/") and key != "loss/total":
            label = key[5:]
            terms.append(f"{'+ ' if terms else ''}{label} {weights.get(label, 1.0) * value:.4f}")
    if "loss/total" in row:
        terms.append(f"{'= ' if terms else ''}total {row['loss/total']:.4f}")
    stage = f" [{row['stage']}]" if "stage" in row else ""
    parts = [f"epoch {row['epoch']}{stage}:", *terms]
    if "train_top1" in row:
        parts.append(f"train {row['train_top1']:.2%}")
    parts += [f"{name} {row[k]:.2%}" for k, name in _EVALS.items() if k in row]
    if "val_kl" in row:
        parts.append(f"kl {row['val_kl']:.4f}")
    parts.append(f"{row['images_per_s']:.0f} img/s")
    if left:
        parts.append(left)
    return parts


def epoch_line(row: dict[str, Any], weights: dict[str, float], left: Optional[str] = None) -> str:
    """``epoch 2: ce 0.4123 + logits 0.2110 + pair:block3->layer3 0.0812 = total 0.7045  train 85.00%  val 84.38%
    1234 img/s``: :func:`epoch_fields` on one line."""
    return join_fields(epoch_fields(row, weights, left))[0]


def epoch_legend(row: dict[str, Any], weights: dict[str, float], warmed: bool = False) -> list[str]:
    """What the first epoch line needs explained, printed once before it, one line each: the weights inside its
    terms (those that are not 1; ``warmed``: some warm up), ``agree`` and ``kl``. Empty when there is nothing to say."""
    said = []
    weighted = [f"{label} ×{weights[label]:g}" for label in (k[5:] for k in row if k.startswith("loss/"))
                if weights.get(label, 1.0) != 1.0]
    if weighted or warmed:
        said.append("each loss term is shown weighted, as it adds up to total ("
                    + ", ".join([*weighted, *(["warm-ups scale the weights of their first epochs"] if warmed else [])])
                    + "; metrics.jsonl keeps the terms unweighted)")
    if any(k.startswith("val_agree") for k in row):
        said.append("agree: how often student and teacher pick the same class on the test images")
    if any(k.startswith("val_kl") for k in row):
        said.append("kl: KL(teacher ‖ student) of their softmaxes, the mean over the test images (nats)")
    return ["  " + line for line in said]
