"""TensorBoard logging of metric rows (``runtime.log: [jsonl, tensorboard]``), optional: needs ``tensorboard``.

A row is what ``metrics.jsonl`` holds (``{"epoch": 3, "loss/total": 0.41, "val_top1": 0.83, ...}``); every
numeric value becomes one scalar under its own key, so ``loss/ce``, ``loss/pair:block3->layer3`` … share the
``loss`` section in TensorBoard. ``epoch`` is the step, not a scalar; strings, booleans and None are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdgraph.errors import KdgraphError

__all__ = ["TensorBoardLogger", "TensorBoardMissingError"]


class TensorBoardMissingError(KdgraphError, ImportError):
    """``runtime.log`` asks for TensorBoard but the ``tensorboard`` package is not installed."""


class TensorBoardLogger:
    """Write metric rows as TensorBoard scalars under ``log_dir`` (created if needed)."""

    @staticmethod
    def check_available() -> None:
        """Raise TensorBoardMissingError (a user error naming runtime.log) when tensorboard is not installed."""
        try:
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise TensorBoardMissingError(
                "TensorBoard logging needs the tensorboard package, which is not installed: pip install tensorboard "
                "(or remove `tensorboard` from runtime.log)", key="runtime.log"
            ) from None

    def __init__(self, log_dir: str | Path):
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def log(self, row: dict[str, Any], step: int) -> None:
        """One scalar per numeric entry of ``row`` at ``step``; flushed, so TensorBoard shows it at once."""
        if self._writer is None:
            raise RuntimeError("TensorBoardLogger.log() after close()")
        for key, value in row.items():
            if key == "epoch" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self._writer.add_scalar(key, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file; further ``close()`` calls do nothing."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TensorBoardLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
