"""What a run directory holds, for resuming: whether a run already finished, and the summary it left.

``train`` asks ``finished`` so that ``--resume`` on a finished run redoes nothing (no teacher cache, no epoch).
"""

from __future__ import annotations

import json
from typing import Any

from kdgraph.train.checkpoint import latest_checkpoint, read_meta
from kdgraph.train.rundir import RunDir

__all__ = ["finished", "previous_summary"]


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
