"""Inter-Channel Correlation for Knowledge Distillation (ICKD).

Liu, Huang, Lin, Xie, Wang, Chang & Liang, "Exploring Inter-Channel Correlation for Diversity-preserved Knowledge
Distillation", ICCV 2021.

The student matches the teacher's correlation *between channels* (which channels are homologous, which are
diverse), computed over the spatial positions of each sample, after the student's map is projected to the
teacher's width::

    G = F F^T                             (C, C) per sample, F the map flattened to (C, H*W)
    G~[i, :] = G[i, :] / ||G[i, :]||_2    (each row L2-normalised)
    L = (1/(B C)) sum_{b, i, j} (G~^s - G~^t)^2        = C * (mean squared error over the B*C*C entries)

Defaults: the last feature map before pooling; the student projected by a 1x1 convolution (no bias) + BatchNorm
to the teacher's width (a projector adapter); loss weight 2.5 on CIFAR-100 (the official README's command,
``-b 2.5``; its ``train_student.sh`` uses 4), ResNet32x4 -> ResNet8x4 75.25 without KD, 75.48 with KD.

Reference code followed: the official ``ADLab-AutoDrive/ICKD`` ``Cifar100/distiller_zoo/ICKD.py``
(``batch_loss``): the row normalisation (``F.normalize(dim=2)``) and the division by ``B * C``. As we read the
paper, its loss averages the squared differences of the raw correlation matrices over the ``C x C`` entries; the
published CIFAR-100 numbers come from the code, which is what is implemented.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.checks import check_maps
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "channel_correlation", "ickd"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "ickd": (
        "pair of maps (B, C, H, W) of equal width (the student projected to the teacher's width by a 1x1 conv + "
        "BatchNorm projector, trained with the student); the spatial grids may differ",
    ),
}


def channel_correlation(x: Tensor) -> Tensor:
    """ICKD's row-normalised inter-channel correlation of ``x`` ``(B, C, ...)``: ``(B, C, C)``."""
    f = x.reshape(x.shape[0], x.shape[1], -1)
    return F.normalize(torch.bmm(f, f.transpose(1, 2)), dim=2)


@fp32_compute
def ickd(student: Tensor, teacher: Tensor) -> Tensor:
    """Inter-channel correlation loss (Liu et al., ICCV 2021): ``L = (1/(B C)) sum (G~^s - G~^t)^2``.

    ``G~`` = :func:`channel_correlation`; maps ``(B, C, *grid)`` of equal width ``C`` (grids may differ).
    """
    check_maps("ickd", student, teacher, same_channels=True, same_grid=False)
    diff = channel_correlation(student) - channel_correlation(teacher)
    return (diff * diff).sum() / (student.shape[0] * student.shape[1])


# the student projected to the teacher's width (projector: {name: conv1x1, bn: true} in the paper); grids are free
register_loss("ickd", kind="feature", needs="same-width", layouts=("map",))(ickd)
