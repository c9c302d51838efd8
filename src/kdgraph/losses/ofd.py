"""Overhaul of Feature Distillation (OFD): pre-ReLU features, a margin from the teacher's BatchNorm, partial L2.

Heo, Kim, Yun, Park, Kwak & Choi, "A Comprehensive Overhaul of Feature Distillation", ICCV 2019.

The teacher's feature is taken *before* its ReLU, and its negative values are replaced by a per-channel margin
``m`` (the expected value of the negative responses); the student (after a connector) is penalised only where the
difference can matter after the ReLU::

    t' = max(t, m)                                       per channel c: m_c < 0
    l(s, t) = (s - t')^2   unless  s <= t' <= 0          (the partial L2: no penalty when both are "off"
                                                          and the student is already below the teacher)
    L = (1/B) sum_{b, c, h, w} l(s, t)

The margin of channel ``c`` comes from the teacher's BatchNorm right before the tapped ReLU: its pre-activation is
modelled as a Gaussian with mean ``beta_c`` (BN bias) and standard deviation ``|gamma_c|`` (BN weight), and ``m_c``
is the expectation of its negative part, ``E[x | x < 0] = mu - sigma phi(mu/sigma) / Phi(-mu/sigma)``;
when ``Phi(-mu/sigma) <= 1e-3`` (almost no negative mass) the official code uses ``-3 sigma`` instead
(:func:`ofd_margin`).

Paper defaults: connector = 1x1 conv + BatchNorm (:class:`OFDConnector`), distillation positions at the end of
each stage before the ReLU, stage weights ``1 / 2^(n - i - 1)`` from the deepest, loss divided by 1000 on top
(the official ``loss_distill.sum() / batch_size / 1000``; mdistiller ``OFD.LOSS.FEAT_WEIGHT = 1e-3``).

Reference code followed: the official ``clovaai/overhaul-distillation`` (``distillation_loss``,
``get_margin_from_BN``, ``build_feature_connector``); mdistiller ``mdistiller/distillers/OFD.py`` writes the same
partial L2 as three masked terms and reduces with ``mean(dim=0).sum()``, i.e. the same sum over positions divided
by the batch size used here.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from kdgraph.losses.checks import check_maps
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "OFDConnector", "OFDModule", "ofd", "ofd_margin", "ofd_margin_from_bn", "ofd_term"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "ofd": (
        "pre-activation taps (before the ReLU): the teacher's pre-ReLU map and the student's pre-ReLU map",
        "pair of maps with equal spatial grid after the connector (the student map is connected to the teacher's "
        "width)",
        "the teacher's BatchNorm right before the tapped ReLU (weight, bias), read from the *unfolded* teacher at "
        "build time (FrozenTeacher folds BatchNorm into the convolutions); the margin is a constant buffer",
        "trainable OFDConnector (1x1 conv + BatchNorm) trained with the student and saved with the adapters",
    ),
}

#: Below this negative mass ``Phi(-mu/sigma)`` the margin is ``-3 sigma`` (official code).
MIN_NEGATIVE_MASS: float = 1e-3


def ofd_margin(weight: Tensor, bias: Tensor) -> Tensor:
    """Per-channel OFD margin from a BatchNorm's affine parameters, ``(C,)``, computed in float64.

    With ``sigma = |weight|`` and ``mu = bias``: ``m = mu - sigma phi(mu/sigma) / Phi(-mu/sigma)``, the mean of
    ``x ~ N(mu, sigma^2)`` conditioned on ``x < 0``; ``-3 sigma`` where ``Phi(-mu/sigma) <= 1e-3``. Returned in
    ``weight``'s dtype (float32 for low precision), detached. Every margin is ``< 0`` when ``sigma > 0``.
    """
    if weight.ndim != 1 or weight.shape != bias.shape:
        raise ValueError(
            f"ofd_margin: expected BatchNorm weight and bias of equal shape (C,), got {tuple(weight.shape)} and "
            f"{tuple(bias.shape)}"
        )
    sigma = weight.detach().double().abs().clamp_min(1e-12)
    mu = bias.detach().double()
    a = mu / sigma
    neg_mass = torch.special.ndtr(-a)  # Phi(-mu/sigma)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)  # phi(mu/sigma)
    conditional = mu - sigma * pdf / neg_mass.clamp_min(MIN_NEGATIVE_MASS)
    margin = torch.where(neg_mass > MIN_NEGATIVE_MASS, conditional, -3.0 * sigma)
    dtype = weight.dtype if weight.dtype in (torch.float32, torch.float64) else torch.float32
    return margin.to(dtype)


def ofd_margin_from_bn(bn: nn.modules.batchnorm._BatchNorm) -> Tensor:
    """:func:`ofd_margin` of a BatchNorm module (its ``weight`` and ``bias``; an affine-free BN is refused)."""
    if bn.weight is None or bn.bias is None:
        raise ValueError("ofd_margin_from_bn: the BatchNorm has no affine weight/bias to read the margin from")
    return ofd_margin(bn.weight, bn.bias)


class OFDConnector(nn.Sequential):
    """OFD's connector: a bias-free 1x1 convolution from the student's width to the teacher's, then BatchNorm.

    Initialised as the official code: conv weights ``N(0, 2 / (k * k * out_channels))``, BN weight 1, bias 0.
    Trainable with the student; saved with the adapters.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        bn = nn.BatchNorm2d(out_channels)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * out_channels)))
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        super().__init__(conv, bn)


@fp32_compute
def ofd(student: Tensor, teacher: Tensor, *, margin: Tensor) -> Tensor:
    """OFD's partial L2 (Heo et al., ICCV 2019), summed over positions and averaged over the batch:
    ``t' = max(t, m)``, ``L = (1/B) sum (s - t')^2 * [not (s <= t' <= 0)]``.

    ``student`` is the connected student pre-ReLU map, ``teacher`` the teacher's pre-ReLU map, of equal shape
    ``(B, C, ...)``; ``margin`` is the per-channel ``(C,)`` tensor from :func:`ofd_margin` (negative values).
    """
    check_maps("ofd", student, teacher, same_channels=True)
    if margin.ndim != 1 or margin.shape[0] != teacher.shape[1]:
        raise ValueError(
            f"ofd: margin must be a (C,) tensor with the teacher's {teacher.shape[1]} channels, "
            f"got {tuple(margin.shape)}"
        )
    m = margin.to(device=teacher.device, dtype=teacher.dtype).reshape(1, -1, *([1] * (teacher.ndim - 2)))
    target = torch.maximum(teacher, m)
    keep = (student > target) | (target > 0)
    diff = student - target
    return (diff * diff * keep).sum() / student.shape[0]


class OFDModule(nn.Module):
    """The loss-side module of ``loss: ofd``: the trainable connector and the teacher's margin (a constant buffer)."""

    margin: Tensor

    def __init__(self, in_channels: int, out_channels: int, margin: Tensor) -> None:
        super().__init__()
        self.connector = OFDConnector(in_channels, out_channels)
        self.register_buffer("margin", margin.detach().clone())


def _connector(student: Any, teacher: Any, *, teacher_batchnorm: list[Optional[nn.Module]]) -> OFDModule:
    bn = teacher_batchnorm[0]
    if bn is None:
        raise ValueError("ofd reads its margin from the teacher's BatchNorm before the ReLU, but the teacher tap is "
                         "no BatchNorm's output (nor a residual sum ending in one); tap the pre-activation, such as "
                         "the BatchNorm itself or NAME:input of the ReLU after it (kdgraph inspect lists both)")
    if bn.num_features != teacher.channels:
        raise ValueError(f"the teacher's BatchNorm before the tap has {bn.num_features} channels but the tap has "
                         f"{teacher.channels}")
    return OFDModule(student.channels, teacher.channels, ofd_margin_from_bn(bn))


@register_loss("ofd", kind="feature", needs="same-grid", layouts=("map",), module=_connector,
               inputs=("teacher_batchnorm",))
def ofd_term(student: Tensor, teacher: Tensor, *, module: OFDModule) -> Tensor:
    """OFD (Heo et al., ICCV 2019): ``L = (1/B) sum (c(s) - t')^2 [not (c(s) <= t' <= 0)]``, ``t' = max(t, m)``: the
    connector ``c`` trained with the student, the margin ``m`` from the teacher's BatchNorm (:func:`ofd`)."""
    return ofd(module.connector(student), teacher, margin=module.margin)
