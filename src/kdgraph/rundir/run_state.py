"""What a run directory holds, for resuming and for stopping: whether a run already finished, and what is left
behind (or removed) when a command fails or is interrupted before anything was trained.

``train`` asks ``finished`` so that ``--resume`` on a finished run redoes nothing (no teacher cache, no epoch), and
wraps its work in ``tidy_on_failure`` so that a Ctrl-C during setup (the teacher top-1 pass, the teacher cache)
leaves no half-made run directory behind, and a Ctrl-C says exactly what is left.
"""

from __future__ import annotations

import json
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from kdgraph.rundir.checkpoint import latest_checkpoint, read_meta
from kdgraph.rundir.rundir import RunDir
from kdgraph.session.signals import Interrupted

__all__ = ["finished", "previous_summary", "tidy_on_failure", "stopped_by", "first_missing"]


def finished(run_dir: RunDir, epochs: int) -> bool:
    """True when the newest checkpoint marks all ``epochs`` epochs done: resuming has nothing left to train."""
    last = latest_checkpoint(run_dir.checkpoints)
    if last is None:
        return False
    position = read_meta(last)
    return position["epoch"] >= epochs and position["step_in_epoch"] == 0


def previous_summary(run_dir: RunDir) -> dict[str, Any]:
    """The run's summary.json (written once its own training finished), or {} when there is none to reuse."""
    try:
        summary = json.loads(run_dir.summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (what creating ``path`` will create), or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _newest_checkpoint(run_dir: RunDir) -> Optional[str]:
    last = latest_checkpoint(run_dir.checkpoints)
    return last.stem if last else None


def _trained(run_dir: RunDir) -> bool:
    """Something worth keeping: a checkpoint or a finished epoch's metrics row."""
    return run_dir.metrics.is_file() or _newest_checkpoint(run_dir) is not None


def _contents(path: Path) -> str:
    """``spec.yaml, checkpoints/ (empty)``: what a folder holds, one level deep."""
    names = []
    for entry in sorted(path.iterdir()) if path.is_dir() else []:
        empty = entry.is_dir() and not any(entry.iterdir())
        names.append(entry.name + ("/" if entry.is_dir() else "") + (" (empty)" if empty else ""))
    return ", ".join(names) or "nothing"


@contextmanager
def tidy_on_failure(run_dir: Optional[RunDir]) -> Iterator[None]:
    """Around everything a run writes. On any failure before anything was trained, the folders this call created
    (``first_missing`` at entry) are removed; anything that existed before is never touched. A KeyboardInterrupt
    (a Ctrl-C before the signal handlers are in place, or a second one) becomes ``Interrupted`` saying what is
    left. ``run_dir`` None (nothing written, or a non-writing rank): failures pass through unchanged."""
    created = first_missing(run_dir.path) if run_dir is not None else None
    try:
        yield
    except BaseException as err:
        if run_dir is None:
            raise
        removed = created is not None and not _trained(run_dir)
        if removed:
            shutil.rmtree(created, ignore_errors=True)
        elif isinstance(err, Interrupted) and err.run_dir is None:  # an inner run (the baseline) left nothing
            err.run_dir, err.checkpoint = run_dir.path, _newest_checkpoint(run_dir)
        if not isinstance(err, KeyboardInterrupt):
            raise
        raise _interrupted(run_dir, created if removed else None) from None


def stopped_by(signum: int, run_dir: Optional[RunDir]) -> Interrupted:
    """The run stopped on a signal after writing a checkpoint: where it is, so the caller can say how to go on."""
    name = signal.Signals(signum).name
    if run_dir is None:
        return Interrupted(f"stopped by {name}")
    last = _newest_checkpoint(run_dir)
    return Interrupted(f"stopped by {name}; checkpoint {last} written in {run_dir.path}", run_dir=run_dir.path,
                       checkpoint=last)


def _interrupted(run_dir: RunDir, removed: Optional[Path]) -> Interrupted:
    path = run_dir.path
    if removed is not None:
        made = f"{removed}, which this command had created" + (f" for {path}" if removed != path else "")
        return Interrupted(f"interrupted before anything was trained; removed {made}")
    last = _newest_checkpoint(run_dir)
    if last is not None:
        return Interrupted(f"interrupted; the last checkpoint {last} in {path} is intact", run_dir=path,
                           checkpoint=last)
    return Interrupted(f"interrupted before the first checkpoint; {path} existed before this command and is kept: "
                       f"it holds {_contents(path)}", run_dir=path)
