"""Guards around the training step: the finiteness check, its error, and stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from kdgraph.errors import KdgraphError

__all__ = ["NumericalError", "Interrupted", "total_norm", "stop_on_signals"]


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' global L2 norm (only to test finiteness; nothing is rescaled)."""
    if hasattr(nn.utils, "get_total_norm"):
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else \
        torch.zeros(())


class NumericalError(KdgraphError):
    """Too many consecutive steps had a non-finite loss or gradient."""


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
    """The run was stopped by a signal after writing a checkpoint."""


