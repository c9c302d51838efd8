"""Stopping cleanly on SIGINT/SIGTERM: the handler that lets the current step finish and checkpoint, and
``Interrupted``, the error a stopped run ends with (what the CLI turns into exit code 130 and a resume line)."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from kdgraph.errors import KdgraphError

__all__ = ["Interrupted", "stop_on_signals"]


@contextmanager
def stop_on_signals(loop: Any) -> Iterator[None]:
    """SIGINT/SIGTERM: finish the current step, checkpoint, then stop (a second signal interrupts at once)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if loop.stop_signal is not None:
            raise KeyboardInterrupt
        loop.stop_signal = signum
        loop.reporter.warn(f"{signal.Signals(signum).name} received: finishing this step and writing a checkpoint")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Interrupted(KdgraphError):
    """The run was stopped by a signal (or a Ctrl-C). ``run_dir`` is the run directory left behind (None when nothing
    was left) and ``checkpoint`` the name of its newest checkpoint (None when there is none): what a caller needs
    to say how to go on (the CLI prints the command)."""

    def __init__(self, message: str, *, run_dir: Optional[Path] = None, checkpoint: Optional[str] = None):
        super().__init__(message)
        self.run_dir, self.checkpoint = run_dir, checkpoint
