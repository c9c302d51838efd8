"""ReviewKD: attention-based fusion (ABF) across student stages and the hierarchical context loss (HCL).

Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021.

Each teacher stage is matched not by the student's same stage alone but by a fusion of that stage with all the
student's deeper stages ("review"): from the deepest stage down, an ABF block transforms the stage's map, fuses
it with the (upsampled) running residual of the deeper stages through two spatial attention maps, and outputs a
map of the teacher stage's width and size. Every output is compared with its teacher stage by HCL, an MSE over a
spatial pyramid::

    ABF_i:   x = BN(conv1x1(S_i))                                          (mid channels)
             a = sigmoid(conv1x1([x, up(r_{i+1})]))   (2 maps)             (all stages but the deepest)
             x = a_0 * x + a_1 * up(r_{i+1});   r_i = x
             out_i = BN(conv3x3(resize(x, teacher size)))                  (teacher stage's channels)
    HCL(s, t) = ( MSE(s, t) + sum_{l in levels, l < H} w_l MSE(pool_l(s), pool_l(t)) ) / (1 + sum w_l)
             w = 1/2, 1/4, 1/8 for the levels kept, in order;  pool_l = adaptive average pooling to l x l
    L = sum_i HCL(out_i, T_i)

Paper defaults: pyramid levels (4, 2, 1); mid channels ``min(512, C of the deepest student stage)``; the student's
stages include the pooled feature as a 1x1 map; loss weight 5 for ResNet32x4 -> ResNet8x4 on CIFAR-100 (the
official ``script/reviewKD.sh``, ``--kd-loss-weight 5.0``; mdistiller ``REVIEWKD_WEIGHT: 5.0``) with a linear
warm-up ``min(epoch / 20, 1)`` (:func:`kdgraph.losses.dkd.dkd_warmup`; the official code counts epochs from 0,
mdistiller from 1); teacher stages taken before their ReLU (the official ``preact=True``).

Reference code followed: the official ``dvlab-research/ReviewKD`` ``CIFAR-100/model/reviewkd.py`` (``ABF``,
``hcl``) and mdistiller ``mdistiller/distillers/ReviewKD.py`` (identical): nearest-neighbour resizing, Kaiming-
uniform (a=1) initialisation of the two convolutions, and a pyramid level ``l`` skipped when ``l >= H`` (the
map's height; the references assume square maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import MANY, register_loss

__all__ = ["ABF", "NEEDS", "ReviewKDFusion", "hcl", "review_kd", "review_term"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "review_kd": (
        "several taps per model: every student stage map, shallow -> deep, plus the pooled feature as a (B, C, 1, 1) "
        "map, and the teacher's maps at the matching stages (pre-ReLU), one per student stage",
        "trainable ReviewKDFusion (a chain of ABF blocks, built from the student stage widths and the teacher stage "
        "widths and sizes) trained with the student and saved with the adapters: the loss takes its outputs",
        "the epoch, for the warm-up factor min(epoch / 20, 1) the term is multiplied by",
    ),
    "hcl": ("pair of maps (B, C, H, W) of equal shape (one stage of review_kd)",),
}

#: The paper's pyramid levels.
LEVELS: tuple[int, ...] = (4, 2, 1)


class ABF(nn.Module):
    """Attention-based fusion of one student stage with the residual of the deeper stages.

    ``conv1``: 1x1 conv (no bias) + BN, ``in_channels -> mid_channels``; ``att`` (only when ``fuse``): 1x1 conv
    ``2 * mid -> 2`` + sigmoid; ``conv2``: 3x3 conv (no bias) + BN, ``mid -> out_channels``.
    ``forward(x, residual, out_size)`` returns ``(output, new_residual)``.
    """

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.att = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None = None, out_size: tuple[int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att is not None:
            if residual is None:
                raise ValueError("ABF: a fusing block needs the residual of the deeper stages")
            y = F.interpolate(residual, size=tuple(x.shape[-2:]), mode="nearest")
            a = self.att(torch.cat([x, y], dim=1))
            x = x * a[:, 0:1] + y * a[:, 1:2]
        if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=tuple(out_size), mode="nearest")
        return self.conv2(x), x


class ReviewKDFusion(nn.Module):
    """The ABF chain over the student's stages (shallow -> deep), one output per stage.

    ``in_channels``: the student stages' widths (the last one usually the pooled feature as a 1x1 map);
    ``out_channels``: the matching teacher stages' widths; ``out_sizes``: the teacher stages' ``(H, W)`` (``None``:
    keep each student stage's size); ``mid_channels``: default ``min(512, in_channels[-1])`` (paper).
    ``forward(features)`` takes the student maps (a ``(B, C)`` pooled vector is read as ``(B, C, 1, 1)``) and
    returns the fused maps, shallow -> deep.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        out_sizes: Sequence[tuple[int, int]] | None = None,
        mid_channels: int | None = None,
    ) -> None:
        super().__init__()
        if len(in_channels) == 0 or len(in_channels) != len(out_channels):
            raise ValueError(
                f"ReviewKDFusion: one teacher width per student stage, got {len(in_channels)} student stages and "
                f"{len(out_channels)} teacher widths"
            )
        if out_sizes is not None and len(out_sizes) != len(in_channels):
            raise ValueError(f"ReviewKDFusion: {len(out_sizes)} output sizes for {len(in_channels)} stages")
        mid = min(512, in_channels[-1]) if mid_channels is None else mid_channels
        n = len(in_channels)
        # blocks[i] serves stage i; the deepest one has nothing deeper to fuse with
        self.blocks = nn.ModuleList(
            ABF(c_in, mid, c_out, fuse=i < n - 1) for i, (c_in, c_out) in enumerate(zip(in_channels, out_channels))
        )
        self.out_sizes = None if out_sizes is None else [tuple(s) for s in out_sizes]
        self.in_channels = list(in_channels)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.blocks):
            raise ValueError(f"ReviewKDFusion: expected {len(self.blocks)} student stages, got {len(features)}")
        maps = [f[:, :, None, None] if f.ndim == 2 else f for f in features]
        for i, (f, c) in enumerate(zip(maps, self.in_channels)):
            if f.ndim != 4 or f.shape[1] != c:
                raise ValueError(f"ReviewKDFusion: stage {i} must be a (B, {c}, H, W) map, got {tuple(f.shape)}")
        outputs: list[Tensor] = [maps[0]] * len(maps)
        residual: Tensor | None = None
        for i in reversed(range(len(maps))):
            size = None if self.out_sizes is None else self.out_sizes[i]
            outputs[i], residual = self.blocks[i](maps[i], residual, size)
        return outputs


@fp32_compute
def hcl(student: Tensor, teacher: Tensor, *, levels: Sequence[int] = LEVELS) -> Tensor:
    """Hierarchical context loss (Chen et al., CVPR 2021) of one stage:
    ``(MSE(s, t) + sum_j w_j MSE(pool_{l_j}(s), pool_{l_j}(t))) / (1 + sum_j w_j)``.

    The levels ``l`` with ``l >= H`` are skipped; the kept ones get ``w = 1/2, 1/4, ...`` in order; ``pool_l`` is
    adaptive average pooling to ``l x l``; MSE is the mean over all entries. Maps of equal shape ``(B, C, H, W)``
    (a ``(B, C)`` pair is a 1x1 map: plain MSE).
    """
    if student.shape != teacher.shape or student.ndim not in (2, 4) or student.shape[0] == 0:
        raise ValueError(
            f"hcl: expected student and teacher maps of equal shape (B, C, H, W), got {tuple(student.shape)} and "
            f"{tuple(teacher.shape)}; the fusion must output the teacher stage's width and size"
        )
    loss = F.mse_loss(student, teacher)
    if student.ndim == 2:
        return loss
    weight, total = 1.0, 1.0
    for level in levels:
        if level >= student.shape[2]:
            continue
        weight /= 2.0
        pooled = F.mse_loss(F.adaptive_avg_pool2d(student, level), F.adaptive_avg_pool2d(teacher, level))
        loss = loss + weight * pooled
        total += weight
    return loss / total


def review_kd(student: Sequence[Tensor], teacher: Sequence[Tensor], *, levels: Sequence[int] = LEVELS) -> Tensor:
    """ReviewKD's loss: ``L = sum_i HCL(fused_i, T_i)`` over the stages (:func:`hcl`).

    ``student`` are the :class:`ReviewKDFusion` outputs and ``teacher`` the teacher's stage maps, in the same
    order and of pairwise equal shapes. Each stage is computed in float32 for fp16/bf16 maps (by :func:`hcl`).
    """
    if isinstance(student, Tensor) or isinstance(teacher, Tensor):
        raise ValueError("review_kd: expected a sequence of stage maps per model, got a single tensor")
    if len(student) == 0 or len(student) != len(teacher):
        raise ValueError(f"review_kd: {len(student)} fused student stages for {len(teacher)} teacher stages")
    losses = [hcl(s, t, levels=levels) for s, t in zip(student, teacher)]
    total = losses[0]
    for loss in losses[1:]:
        total = total + loss
    return total


def _fusion(student: Sequence[Any], teacher: Sequence[Any], *, mid_channels: int | None = None) -> ReviewKDFusion:
    """The loss-side module of ``loss: reviewkd``: the ABF chain from the student's stages to the teacher's widths
    and sizes (a vector stage is a 1x1 map)."""
    sizes = [tuple(t.shape[1:]) if t.layout == "map" else (1, 1) for t in teacher]
    return ReviewKDFusion([s.channels for s in student], [t.channels for t in teacher], sizes, mid_channels)


@register_loss("reviewkd", kind="feature", needs="any", layouts=("map", "vector"), taps=MANY, module=_fusion)
def review_term(student: Sequence[Tensor], teacher: Sequence[Tensor], *, module: ReviewKDFusion,
                levels: Sequence[int] = LEVELS) -> Tensor:
    """ReviewKD (Chen et al., CVPR 2021): ``L = sum_i HCL(ABF(S_i, S_{>i}), T_i)`` over the stages, shallow to deep,
    the fusion trained with the student (:func:`review_kd`)."""
    maps = [t[:, :, None, None] if t.ndim == 2 else t for t in teacher]
    return review_kd(module(list(student)), maps, levels=tuple(levels))
