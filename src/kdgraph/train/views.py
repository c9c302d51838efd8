"""What each model sees in a training step: augmentation, shared or independent views, mixup/cutmix, targets.

Function matching (Beyer et al., CVPR 2022) needs teacher and student to see the *same* augmented and mixed
batch (``data.views: shared``); ``independent`` gives the teachers their own augmentation and mixing draw (the
ablation). With mixing, the labels become soft targets ``a·onehot(y) + (1 − a)·onehot(roll(y, 1))`` for the CE term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from kdgraph.data import cutmix, mixup, random_crop_flip, random_resized_crop_flip
from kdgraph.spec.schema import DataSpec

__all__ = ["Views", "make_views", "crop_padding", "normalised_fill"]


@dataclass
class Views:
    """One step's inputs: the student's batch, the teachers' (None: the same tensor), CE targets, hard labels."""

    student: torch.Tensor
    teacher: Optional[torch.Tensor]
    target: torch.Tensor
    labels: torch.Tensor


def crop_padding(data: DataSpec, width: int) -> int:
    """``data.crop_padding``, or its default ``max(1, W // 8)`` (4 px for 32-px images, the CIFAR recipe)."""
    return data.crop_padding if data.crop_padding is not None else max(1, width // 8)


def normalised_fill(pixel: float, norm: Optional[tuple[Sequence[float], Sequence[float]]]) -> tuple[float, ...]:
    """The padding colour ``pixel`` (in [0, 1]) in the batch's space: ``(pixel - mean) / std`` per channel.

    Batches arrive normalised; torchvision pads the [0, 1] image before normalising, so black is 0 there and
    ``-mean / std`` here. Padding the normalised batch with 0 would be mid-grey: a border a teacher trained with
    torchvision's RandomCrop never saw. ``norm=None``: the batch is not normalised."""
    if norm is None:
        return (float(pixel),)
    mean, std = norm
    return tuple((float(pixel) - m) / s for m, s in zip(mean, std))


def _augment(x: torch.Tensor, data: DataSpec, generator: torch.Generator, draw: Optional[tuple[int, int]],
             norm: Optional[tuple[Sequence[float], Sequence[float]]]) -> torch.Tensor:
    if data.augment == "crop-flip":
        return random_crop_flip(x, padding=crop_padding(data, x.shape[-1]), generator=generator, draw=draw,
                                fill=normalised_fill(data.crop_fill, norm))
    if data.augment == "resized-crop-flip":
        return random_resized_crop_flip(x, scale=data.crop_scale, generator=generator, draw=draw)
    return x


def _mix(x: torch.Tensor, onehot: Optional[torch.Tensor], data: DataSpec,
         generator: torch.Generator) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    if data.mix.name == "mixup":
        return mixup(x, onehot, alpha=data.mix.alpha, generator=generator)
    if data.mix.name == "cutmix":
        return cutmix(x, onehot, alpha=data.mix.alpha, generator=generator)
    return x, onehot


def make_views(x: torch.Tensor, y: torch.Tensor, data: DataSpec, num_classes: int,
               generator: torch.Generator, two_views: bool, draw: Optional[tuple[int, int]] = None,
               norm: Optional[tuple[Sequence[float], Sequence[float]]] = None) -> Views:
    """Augment (and mix) ``x`` for the student and, with ``two_views`` and ``data.views: independent``, separately
    for the teachers. Without mixing the CE target is ``y`` itself (class indices).

    ``draw=(offset, total)``: ``x`` is one data-parallel shard of a global batch; crops are drawn for the whole batch
    (the same as in one process). Mixing pairs each image with its neighbour inside the shard. ``norm=(mean, std)``:
    the normalisation ``x`` carries, so padding has its pixel-space colour (``data.crop_fill``)."""
    mixing = data.mix.name != "none"
    onehot = F.one_hot(y, num_classes).float() if mixing else None
    student, target = _mix(_augment(x, data, generator, draw, norm), onehot, data, generator)
    teacher = None
    if two_views and data.views == "independent":
        teacher, _ = _mix(_augment(x, data, generator, draw, norm), None, data, generator)
    return Views(student=student, teacher=teacher, target=y if target is None else target, labels=y)
