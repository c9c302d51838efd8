"""Optimizers and per-step learning-rate schedules (linear warmup, then constant / step / cosine)."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

from kdgraph.spec.schema import OptimizerSpec, ScheduleSpec

__all__ = ["build_optimizer", "lr_factor", "build_scheduler", "schedule_warning", "FUSED_DEVICES"]

FUSED_DEVICES: tuple[str, ...] = ("cuda",)
"""Device types that get torch's fused optimizer kernels (one launch per step, and a device-side skip of
non-finite steps: kdgraph.train.guard). CPU keeps the default (foreach) kernels."""


def build_optimizer(cfg: OptimizerSpec, params: Iterable[torch.nn.Parameter],
                    fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW; no weight decay on biases and norm parameters (1-D tensors) unless
    ``cfg.decay_norm_and_bias``.

    ``fused=None``: fused kernels when every parameter is a floating-point tensor on a ``FUSED_DEVICES`` device."""
    params = [p for p in params if p.requires_grad]
    if fused is None:
        fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    decay = [p for p in params if p.ndim > 1 or cfg.decay_norm_and_bias]
    no_decay = [p for p in params if p.ndim <= 1 and not cfg.decay_norm_and_bias]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    extra = {"fused": True} if fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               **extra)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, **extra)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **extra)


def lr_factor(cfg: ScheduleSpec, step: int, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based)."""
    total = max(1, steps_per_epoch * epochs)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    if cfg.name == "step":
        return cfg.gamma ** (step // (cfg.step_epochs * steps_per_epoch))
    progress = (step - warmup) / max(1, total - warmup)
    floor = cfg.min_lr / base_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def schedule_warning(cfg: ScheduleSpec, epochs: int) -> Optional[str]:
    """Why the schedule will not do what it reads as, if it won't: a warmup as long as the run never peaks."""
    if 0 < epochs <= cfg.warmup_epochs:
        return (f"train.schedule.warmup_epochs {cfg.warmup_epochs:g} is not shorter than train.epochs {epochs}: the "
                "learning rate rises for the whole run and never reaches train.optimizer.lr; lower warmup_epochs")
    return None


def build_scheduler(cfg: ScheduleSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    base_lr = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(cfg, step, steps_per_epoch, epochs, base_lr))

