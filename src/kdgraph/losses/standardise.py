"""Logit standardisation: a z-score of each logit vector before the softmax of any logit term.

Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge Distillation", CVPR 2024.

Instead of a temperature shared by teacher and student, each sample's logit vector is z-scored, so the student
matches the teacher's logit *relations* rather than their range::

    Z(z) = (z - mean(z)) / (std(z) + eps)          per sample, over the K classes
    L = T^2 (1/B) sum_b KL(softmax(Z(z^t_b) / T) || softmax(Z(z^s_b) / T))

``T`` is then the "base temperature" (the effective temperature of each vector is ``T * std(z)``).
:func:`standardise` is a plain tensor transform, so any logit term (KD, DKD, ...) can apply it to both logit
tensors first; :func:`kl_div_standardised` is KD with it.

Paper defaults (CIFAR-100, ResNet32x4 -> ResNet8x4, the official code's command line): base temperature 2,
KD weight 9 with CE weight 0.1 (KD+LS 76.62); for DKD+LS alpha and beta multiplied by 9 and T = 2 (77.01).

Reference code followed: the official ``sunshangquan/logit-standardization-KD``
(``mdistiller/distillers/KD.py``, ``normalize``): ``eps = 1e-7`` added to the standard deviation, and the standard
deviation is ``torch.std``, i.e. with Bessel's correction (divisor ``K - 1``). ``unbiased=False`` gives the
divisor-``K`` deviation instead; the two differ by the factor ``sqrt(K / (K - 1))`` (0.5 % for K = 100), which is
the same as scaling the base temperature.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdgraph.losses.checks import check_logits, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.logits import kl_div

__all__ = ["NEEDS", "kl_div_standardised", "standardise"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "standardise": (
        "a transform, not a loss: logits (B, K), K >= 2; applied to both logit tensors before any logit term",
    ),
    "kl_div_standardised": ("student and teacher logits (B, K) of equal K >= 2",),
}


@fp32_compute
def standardise(logits: Tensor, eps: float = 1e-7, *, unbiased: bool = True) -> Tensor:
    """Z-score every row of ``logits`` ``(B, K)``: ``(z - mean(z)) / (std(z) + eps)``.

    ``std`` is Bessel-corrected (divisor ``K - 1``) as ``torch.std`` in the official code; ``unbiased=False``
    divides by ``K``. A constant row gives zeros with a finite gradient (``torch.std`` would give a NaN gradient
    there: the square root is taken at a floor of the dtype's smallest normal number). fp16/bf16 logits are
    standardised in float32.
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"standardise: expected (B, K) logits, got {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError(
            f"standardise: needs at least 2 classes to have a standard deviation, got K = {logits.shape[1]}"
        )
    if not eps > 0:
        raise ValueError(f"standardise: eps must be > 0, got {eps}")
    centred = logits - logits.mean(dim=1, keepdim=True)
    divisor = logits.shape[1] - 1 if unbiased else logits.shape[1]
    var = (centred * centred).sum(dim=1, keepdim=True) / divisor
    # sqrt at a floor: a constant row (e.g. a zero-initialised head) gets a finite gradient instead of NaN
    std = torch.sqrt(var.clamp_min(torch.finfo(var.dtype).tiny))
    return centred / (std + eps)


@fp32_compute
def kl_div_standardised(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 2.0,
    eps: float = 1e-7,
    unbiased: bool = True,
    t_squared: bool = True,
) -> Tensor:
    """KD on standardised logits (Sun et al., CVPR 2024):
    ``L = T^2 (1/B) sum_b KL(softmax(Z(z^t_b) / T) || softmax(Z(z^s_b) / T))``, ``Z`` = :func:`standardise`.

    ``temperature`` is the base temperature (paper default 2); ``T^2`` only when ``t_squared``.
    """
    check_logits("kl_div_standardised", student_logits, teacher_logits, min_classes=2)
    check_positive("kl_div_standardised", temperature=temperature)
    zs = standardise(student_logits, eps, unbiased=unbiased)
    zt = standardise(teacher_logits, eps, unbiased=unbiased)
    return kl_div(zs, zt, temperature=temperature, t_squared=t_squared)
