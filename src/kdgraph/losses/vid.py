"""Variational Information Distillation (VID).

Ahn, Hu, Damianou, Lawrence & Dai, "Variational Information Distillation for Knowledge Transfer", CVPR 2019.

VID maximises a variational lower bound of the mutual information between teacher and student features: the
teacher's map is modelled as a Gaussian whose mean is regressed from the student's map and whose variance is a
learned per-channel constant, and the student (with the regressor and the variance) minimises its negative
log-likelihood::

    mu = r(S)                                        r: conv1x1 -> ReLU -> conv1x1 -> ReLU -> conv1x1
    sigma_c^2 = softplus(a_c) + eps                  a: one trainable scalar per teacher channel
    L = mean_{b,c,h,w} 1/2 ( (T - mu)^2 / sigma_c^2 + log sigma_c^2 )

(the paper's ``sum log sigma_c + (t - mu)^2 / (2 sigma_c^2)`` up to the constant and the mean instead of the
sum). Defaults: ``a`` initialised so that ``sigma^2 = 5`` (``init_var``), ``eps = 1e-5``, the regressor's middle
width = the teacher's width; weight 1 per stage, the three stage outputs of the CIFAR ResNets (RepDistiller
``-b 1``, mdistiller ``VID.LOSS.FEAT_WEIGHT = 1``).

Reference code followed: RepDistiller ``distiller_zoo/VID.py`` ("code from author") and mdistiller
``mdistiller/distillers/VID.py``: bias-free 1x1 convolutions, ``log(1 + exp(a)) + eps``, the init
``a = log(exp(init_var - eps) - 1)``, the mean over all entries. Both pool the larger map to the smaller grid
inside the loss; here that is the layout adapter's job, and the grids must match.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdgraph.losses.checks import check_maps
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "VIDRegressor", "vid", "vid_term"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "vid": (
        "pair of maps (B, C, H, W) with equal spatial grid, widths may differ (the regressor maps the student's "
        "width to the teacher's)",
        "trainable VIDRegressor (regressor + per-channel variance) trained with the student and saved with the "
        "adapters: the loss takes its mean prediction and its variance()",
    ),
}


class VIDRegressor(nn.Module):
    """VID's mean regressor and per-channel variance for one stage.

    ``forward(student)`` is the predicted mean ``mu`` (``(B, out_channels, H, W)``); :meth:`variance` is
    ``softplus(a) + eps`` (``(out_channels,)``), initialised to ``init_var``. Trained with the student.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mid_channels: int | None = None,
        *,
        init_var: float = 5.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if not init_var > eps:
            raise ValueError(f"VIDRegressor: init_var must be > eps = {eps}, got {init_var}")
        mid = out_channels if mid_channels is None else mid_channels
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1, bias=False),
        )
        self.eps = eps
        # softplus(a) + eps = init_var  <=>  a = log(exp(init_var - eps) - 1)
        self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(math.expm1(init_var - eps))))

    def forward(self, student: Tensor) -> Tensor:
        return self.regressor(student)

    def variance(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps


@fp32_compute
def vid(student: Tensor, teacher: Tensor, *, variance: Tensor) -> Tensor:
    """VID's Gaussian negative log-likelihood (Ahn et al., CVPR 2019), without the constant:
    ``L = mean_{b,c,h,w} 1/2 ((t - mu)^2 / sigma_c^2 + log sigma_c^2)``.

    ``student`` is the regressed mean ``mu`` (:class:`VIDRegressor` output), ``teacher`` the teacher's map, of equal
    shape ``(B, C, ...)``; ``variance`` the per-channel ``sigma^2`` ``(C,)`` (:meth:`VIDRegressor.variance`).
    """
    check_maps("vid", student, teacher, same_channels=True)
    if variance.ndim != 1 or variance.shape[0] != teacher.shape[1]:
        raise ValueError(
            f"vid: variance must be a (C,) tensor with the teacher's {teacher.shape[1]} channels, "
            f"got {tuple(variance.shape)}"
        )
    var = variance.to(teacher.dtype).reshape(1, -1, *([1] * (teacher.ndim - 2)))
    diff = teacher - student
    return 0.5 * (diff * diff / var + torch.log(var)).mean()


def _regressor(student: Any, teacher: Any, *, mid_channels: int | None = None, init_var: float = 5.0,
               eps: float = 1e-5) -> VIDRegressor:
    """The loss-side module of ``loss: vid``: a regressor from the student's width to the teacher's."""
    return VIDRegressor(student.channels, teacher.channels, mid_channels, init_var=init_var, eps=eps)


@register_loss("vid", kind="feature", needs="same-grid", layouts=("map",), module=_regressor)
def vid_term(student: Tensor, teacher: Tensor, *, module: VIDRegressor) -> Tensor:
    """VID (Ahn et al., CVPR 2019): ``L = mean 1/2 ((t - r(s))^2 / sigma_c^2 + log sigma_c^2)``, the regressor ``r``
    and the variances ``sigma^2`` trained with the student (:func:`vid`)."""
    return vid(module(student), teacher, variance=module.variance())
