"""Relational Knowledge Distillation (RKD): distance-wise and angle-wise relations of the batch.

Park, Kim, Lu & Cho, "Relational Knowledge Distillation", CVPR 2019.

The student matches the teacher's *structure* of the batch: the pairwise distances (normalised by their mean)
and the angles formed by every triplet, each with the Huber loss ``l_delta`` (``delta = 1``: PyTorch's
``smooth_l1_loss``)::

    psi_D(i, j) = ||f_i - f_j||_2 / mu,      mu = mean_{i != j} ||f_i - f_j||_2
    L_D = mean_{i, j} l_delta(psi_D^s(i, j) - psi_D^t(i, j))                     over all B^2 pairs
    e_ij = (f_i - f_j) / ||f_i - f_j||_2 (0 when f_i = f_j)
    psi_A(i, j, k) = <e_ji, e_ki>   (the cosine of the angle at f_i)
    L_A = mean_{i, j, k} l_delta(psi_A^s(i, j, k) - psi_A^t(i, j, k))            over all B^3 triplets
    L = w_D L_D + w_A L_A

Defaults: ``w_D = 25``, ``w_A = 50`` on the pooled features, RepDistiller's and mdistiller's CIFAR-100 setting
(``RKD.DISTANCE_WEIGHT = 25``, ``ANGLE_WEIGHT = 50``); the paper's metric-learning setting uses ``1`` and ``2``.

Reference code followed: the official ``lenscloth/RKD`` as restructured in RepDistiller
``distiller_zoo/RKD.py``, mdistiller ``mdistiller/distillers/RKD.py`` and torchdistill ``RKDLoss``: distances from
the Gram matrix, squared distances clamped at ``eps = 1e-12`` before the square root and the diagonal set to 0;
``mu`` over the positive entries (exactly the ``B (B - 1)`` off-diagonal pairs, each at least ``1e-6``);
``F.normalize`` (eps 1e-12) for ``e``; the Huber means over the full ``B x B`` and ``B x B x B`` tensors, the
degenerate pairs and triplets included (their terms are 0 on both sides).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.checks import check_batch
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "pairwise_distances", "rkd", "rkd_angle", "rkd_distance"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "rkd": ("pooled vectors (B, D), any widths (batch relations); a batch of at least 2 samples",),
    "rkd_distance": ("pooled vectors (B, D), any widths (batch relations); a batch of at least 2 samples",),
    "rkd_angle": ("pooled vectors (B, D), any widths (batch relations); B x B x D memory for the differences",),
}


def pairwise_distances(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``D[i, j] = sqrt(max(||x_i||^2 + ||x_j||^2 - 2 x_i . x_j, eps))`` off the diagonal, ``D[i, i] = 0``."""
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(eps)
    off = 1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    return d2.sqrt() * off


def _distance_potential(x: Tensor, eps: float) -> Tensor:
    d = pairwise_distances(x, eps)
    b = x.shape[0]
    return d / (d.sum() / (b * (b - 1)))


def _angle_potential(x: Tensor) -> Tensor:
    # diff[i, j] = x_j - x_i: the edges leaving vertex i; psi[i, j, k] = <e(x_j - x_i), e(x_k - x_i)>
    e = F.normalize(x[None, :, :] - x[:, None, :], p=2, dim=2)
    return torch.bmm(e, e.transpose(1, 2))


@fp32_compute
def rkd_distance(student: Tensor, teacher: Tensor, *, eps: float = 1e-12) -> Tensor:
    """RKD-D: ``mean_{i,j} huber(psi_D^s - psi_D^t)``, ``psi_D`` = distances over their off-diagonal mean."""
    check_batch("rkd_distance", student, teacher, min_batch=2)
    s, t = student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
    return F.smooth_l1_loss(_distance_potential(s, eps), _distance_potential(t, eps))


@fp32_compute
def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD-A: ``mean_{i,j,k} huber(psi_A^s - psi_A^t)``, ``psi_A(i, j, k) = <e_ji, e_ki>`` (cosine at ``f_i``)."""
    check_batch("rkd_angle", student, teacher)
    s, t = student.reshape(student.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
    return F.smooth_l1_loss(_angle_potential(s), _angle_potential(t))


@fp32_compute
def rkd(
    student: Tensor,
    teacher: Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    eps: float = 1e-12,
) -> Tensor:
    """RKD (Park et al., CVPR 2019): ``L = w_D RKD-D + w_A RKD-A`` (:func:`rkd_distance`, :func:`rkd_angle`).

    Features ``(B, ...)`` are flattened; widths may differ; ``B >= 2``. A zero weight skips its part.
    """
    check_batch("rkd", student, teacher, min_batch=2)
    loss = student.new_zeros(())
    if distance_weight:
        loss = loss + distance_weight * rkd_distance(student, teacher, eps=eps)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle(student, teacher)
    return loss


register_loss("rkd", kind="relational", needs="vectors")(rkd)
