"""Keep the GPU fed: copy the next batch to the device on a side CUDA stream while the current one trains.

On CUDA, batch k+1 is copied (``non_blocking=True``, from the loader's pinned memory) on a side stream while the
training step of batch k runs on the current stream. Before a batch is handed out, the current stream waits for
its copy, and every tensor is marked with ``record_stream`` so the caching allocator does not reuse its memory
while the current stream still reads it. On any other device ``prefetch`` is a plain ``.to(device)`` passthrough.
A batch is a tuple of tensors, or of tuples and dicts of them (nested): the loader's ``(x, y, index)`` and what the
views and a teacher store prepared for it on the host.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Protocol

import torch

__all__ = ["prefetch", "Prefetcher", "CopyStream", "CudaCopyStream", "to_device"]

Batch = tuple[torch.Tensor, ...]


class CopyStream(Protocol):
    """What the prefetcher needs from a stream: start a copy, and hand a copied batch over to the consumer."""

    def copy(self, batch: Batch) -> Batch: ...

    def hand_over(self, batch: Batch) -> None: ...


class CudaCopyStream:
    """A side CUDA stream for host-to-device copies."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def copy(self, batch: Batch) -> Batch:
        with torch.cuda.stream(self.stream):
            return to_device(batch, self.device, non_blocking=True)

    def hand_over(self, batch: Batch) -> None:
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.stream)
        for t in _tensors(batch):
            t.record_stream(current)


class Prefetcher:
    """Iterates ``loader``'s batches with the next one already being copied by ``stream``.

    Order of calls for batches b0, b1, ...: ``copy(b0)``; then for each k: ``hand_over(bk)``, ``copy(b{k+1})``
    (when there is one), yield ``bk``. The hand-over comes first so the consumer waits for bk's copy only, not for
    b{k+1}'s; that copy is queued before the consumer queues step k, so the two overlap."""

    def __init__(self, loader: Iterable[Any], stream: CopyStream):
        self.loader, self.stream = loader, stream

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Batch]:
        it = iter(self.loader)
        ahead = self._next(it)
        while ahead is not None:
            current = ahead
            self.stream.hand_over(current)
            ahead = self._next(it)
            yield current

    def _next(self, it: Iterator[Any]) -> Optional[Batch]:
        try:
            batch = next(it)
        except StopIteration:
            return None
        return self.stream.copy(tuple(batch))


def to_device(obj: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``obj`` (a tensor, or a tuple, list or dict of them, nested) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from _tensors(v)


def _passthrough(loader: Iterable[Any], device: torch.device) -> Iterator[Batch]:
    for batch in loader:
        yield to_device(tuple(batch), device)


def prefetch(loader: Iterable[Any], device: torch.device) -> Iterable[Batch]:
    """``loader``'s ``(x, y, ...)`` batches on ``device``: prefetched on a side stream on CUDA, else copied in
    line (a no-op on CPU)."""
    if device.type == "cuda":
        return Prefetcher(loader, CudaCopyStream(device))
    return _passthrough(loader, device)
