"""Atomic file writes: a temporary file in the same folder, fsynced, given the usual permissions and renamed over
the target, so a crash or Ctrl-C never leaves half a file. Used for everything kdgraph writes (run directories,
checkpoints, exports, ``kdgraph schema --out``); an OS error becomes a user error naming the path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from kdgraph.errors import KdgraphError

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_tensors"]


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _write_error(path: Path, err: OSError) -> KdgraphError:
    """A failed write (the target is a folder, a parent is a file, no permission, disk full) as a user error."""
    reason = err.strerror or str(err)
    if path.is_dir():
        reason = "it is a directory"
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            reason = f"{str(parent)!r} is a file, not a folder"
            break
    return KdgraphError(f"cannot write {str(path)!r}: {reason}")


def _atomic(path: Path, fill: Callable[[str], None]) -> None:
    """``fill(tmp)`` writes a temporary file in the same folder, which is fsynced, given the usual permissions and
    ``os.replace``d over ``path``. Nothing is left behind on failure; OS errors become user errors."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        fill(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        # mkstemp creates 0600, and safetensors' save_file replaces ``tmp`` with a 0600 file of its own
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(path, err) from None
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (tensors made contiguous and moved to CPU)."""
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(flat, tmp, metadata=metadata))
