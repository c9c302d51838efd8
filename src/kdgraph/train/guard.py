"""Guards around the training step: the finiteness check and its error (stopping on SIGINT/SIGTERM is
``kdgraph.session.signals``).

``StepGuard`` makes a step with a non-finite loss or gradient change nothing (weights, optimizer state, BatchNorm
statistics). Two modes, chosen by the optimizer:

- host (any non-fused optimizer, the CPU default): the flag is read on the host every step (one device sync) and
  the update is skipped in Python;
- device (fused optimizers, the CUDA default): the flag stays a device tensor. The fused kernels skip the update
  when ``optimizer.found_inf`` is 1 (the mechanism ``GradScaler`` uses), buffers are restored with ``torch.where``
  on one flat copy, and the counters are read on the host only by ``poll`` (every ``every`` steps) and ``flush``.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from kdgraph.errors import KdgraphError

__all__ = ["NumericalError", "total_norm", "BufferSnapshot", "StepGuard", "prime_momentum"]


def total_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The gradients' global L2 norm (only to test finiteness; nothing is rescaled)."""
    if hasattr(nn.utils, "get_total_norm"):
        return nn.utils.get_total_norm(grads)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else \
        torch.zeros(())


class NumericalError(KdgraphError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class BufferSnapshot:
    """A copy of many buffers in one flat tensor per dtype: one kernel launch to save, one to restore.

    ``save()`` copies every buffer into the flat storage (``torch._foreach_copy_``, no allocation after the first
    call); ``restore()`` copies it back; ``restore_where(keep)`` keeps the current values where the 0-d bool tensor
    ``keep`` is true and restores the saved ones otherwise, without reading ``keep`` on the host."""

    def __init__(self, buffers: list[torch.Tensor]):
        self.groups: list[tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]] = []
        by_key: dict[tuple, list[torch.Tensor]] = {}
        for b in buffers:
            by_key.setdefault((b.device, b.dtype), []).append(b)
        for (device, dtype), group in by_key.items():
            flat = torch.empty(sum(b.numel() for b in group), device=device, dtype=dtype)
            views = [v.view(b.shape) for v, b in zip(flat.split([b.numel() for b in group]), group)]
            self.groups.append((group, flat, views))
        self._scratch: dict[int, tuple[torch.Tensor, list[torch.Tensor]]] = {}

    @torch.no_grad()
    def save(self) -> None:
        for group, _, views in self.groups:
            torch._foreach_copy_(views, group)

    @torch.no_grad()
    def restore(self) -> None:
        for group, _, views in self.groups:
            torch._foreach_copy_(group, views)

    @torch.no_grad()
    def restore_where(self, keep: torch.Tensor) -> None:
        for i, (group, flat, views) in enumerate(self.groups):
            if i not in self._scratch:
                cur = torch.empty_like(flat)
                self._scratch[i] = (cur, [v.view(b.shape) for v, b in zip(cur.split([b.numel() for b in group]),
                                                                           group)])
            cur, cur_views = self._scratch[i]
            torch._foreach_copy_(cur_views, group)
            torch.where(keep, cur, flat, out=cur)
            torch._foreach_copy_(group, cur_views)


def prime_momentum(optimizer: torch.optim.Optimizer) -> None:
    """Give SGD's momentum buffers explicit zeros before the first step.

    Fused SGD allocates them with ``empty_like`` on its first step; if that step is skipped through ``found_inf``
    they would stay uninitialised. With dampening 0 (kdgraph's SGD), ``0 * momentum + g`` equals the first-step
    buffer ``g`` exactly, so priming changes no result."""
    if not isinstance(optimizer, torch.optim.SGD):
        return
    for group in optimizer.param_groups:
        if group["momentum"] == 0 or not group["params"]:
            continue
        if optimizer.state.get(group["params"][0], {}).get("momentum_buffer") is None:
            for p in group["params"]:
                optimizer.state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class StepGuard:
    """Skips non-finite steps exactly; raises ``NumericalError`` after ``max_bad`` consecutive ones.

    ``last_checkpoint`` names the last good checkpoint for the error message (None: no run directory)."""

    def __init__(self, buffers: list[torch.Tensor], max_bad: int, warn: Callable[[str], None],
                 last_checkpoint: Callable[[], Optional[str]] = lambda: None, every: int = 10):
        self.snapshot = BufferSnapshot(buffers)
        self.max_bad, self.warn, self.last_checkpoint, self.every = max_bad, warn, last_checkpoint, every
        self.bad_steps = 0  # consecutive, host mode (and the value last read in device mode)
        self._keep: Optional[torch.Tensor] = None
        self._counters: Optional[torch.Tensor] = None  # device: [consecutive, worst run, skipped steps, images]
        self._labels: list[str] = []
        self._bad_terms: Optional[torch.Tensor] = None
        self._bad_norm: Optional[torch.Tensor] = None
        self._since_poll = 0

    @staticmethod
    def device_side(optimizer: torch.optim.Optimizer) -> bool:
        """True for fused optimizers: their kernels can skip the update on a device-side flag."""
        return bool(optimizer.defaults.get("fused"))

    def before_forward(self) -> None:
        self.snapshot.save()

    def check(self, total: torch.Tensor, grad_norm: torch.Tensor, terms: dict[str, torch.Tensor],
              optimizer: torch.optim.Optimizer, batch: int, finite: Optional[bool] = None) -> bool:
        """After backward: True when the caller must skip the update (host mode, non-finite). In device mode it
        always returns False: ``optimizer.step()`` then skips on the device by itself.

        ``finite``: the verdict agreed by every data-parallel rank (``DistContext.all_finite``), else computed here."""
        if finite is None:
            finite = torch.isfinite(total) & torch.isfinite(grad_norm)
        else:
            finite = torch.tensor(bool(finite), device=total.device)
        if self.device_side(optimizer):
            self._device_check(finite, grad_norm, terms, optimizer, batch)
            return False
        if bool(finite):
            self.bad_steps = 0
            return False
        self.snapshot.restore()
        self.bad_steps += 1
        bad = [k for k, v in terms.items() if not torch.isfinite(v)]
        self._report(bad, float(grad_norm), self.bad_steps, f"step skipped ({self.bad_steps}/{self.max_bad})")
        return True

    def _device_check(self, finite: torch.Tensor, grad_norm: torch.Tensor, terms: dict[str, torch.Tensor],
                      optimizer: torch.optim.Optimizer, batch: int) -> None:
        prime_momentum(optimizer)
        optimizer.found_inf = (~finite).float()
        self.snapshot.restore_where(finite)
        bad = (~finite).long()
        if self._counters is None or self._counters.device != finite.device:
            self._counters = torch.zeros(4, dtype=torch.long, device=finite.device)
            self._bad_norm = torch.zeros((), device=finite.device)
        c = self._counters
        c[0].add_(1).mul_(bad)
        torch.maximum(c[1], c[0], out=c[1])
        c[2].add_(bad)
        c[3].add_(bad, alpha=batch)
        labels = list(terms)
        stacked = torch.stack([v.float() for v in terms.values()])
        if labels != self._labels or self._bad_terms is None:
            self._labels, self._bad_terms = labels, torch.zeros(len(labels), dtype=torch.bool, device=c.device)
        torch.where(finite, self._bad_terms, ~torch.isfinite(stacked), out=self._bad_terms)
        torch.where(finite, self._bad_norm, grad_norm.float(), out=self._bad_norm)
        self._keep = finite

    def mask(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device mode: zero the metrics of a skipped step (the flag is not read); host mode: unchanged."""
        if self._keep is None:
            return values
        keep, self._keep = self._keep, None
        return {k: torch.where(keep, v, torch.zeros((), dtype=v.dtype, device=v.device)) for k, v in values.items()}

    def poll(self) -> int:
        """Call once per step: every ``every`` steps, ``flush()``; otherwise 0 without touching the device."""
        self._since_poll += 1
        if self._counters is None or self._since_poll < self.every:
            return 0
        return self.flush()

    def flush(self) -> int:
        """Read the device counters (one sync): warn about skipped steps, raise ``NumericalError`` after ``max_bad``
        consecutive ones, and return the number of images in the steps skipped since the last flush."""
        self._since_poll = 0
        if self._counters is None:
            return 0
        consecutive, worst, steps, images = self._counters.tolist()
        self.bad_steps = consecutive
        if steps == 0:
            return 0
        bad = [label for label, flag in zip(self._labels, self._bad_terms.tolist()) if flag]
        self._counters[1:].zero_()
        self._report(bad, float(self._bad_norm), worst, f"{steps} step(s) skipped since the last check, "
                     f"{consecutive}/{self.max_bad} consecutive now")
        return images

    def _report(self, bad_terms: list[str], grad_norm: float, run: int, skipped: str) -> None:
        what = f"loss term(s) {', '.join(bad_terms)}" if bad_terms else f"the gradient (norm {grad_norm})"
        self.warn(f"non-finite {what}; {skipped}")
        if run >= self.max_bad:
            last = self.last_checkpoint()
            keep = f"; the last good checkpoint {last} is intact" if last else ""
            raise NumericalError(
                f"{run} consecutive steps with non-finite {what}{keep}. Lower train.optimizer.lr, set "
                "train.grad_clip, or check the inputs and the loss weights", key="train")
