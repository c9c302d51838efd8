"""Decoupled Knowledge Distillation (DKD).

Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.

KD's divergence is split into a target-class part (TCKD: the binary distribution "ground-truth class vs the rest")
and a non-target-class part (NCKD: the distribution over the other K-1 classes, renormalised), and the two are
weighted independently::

    b = [p_y, 1 - p_y]                       p = softmax(z / T), y = the ground-truth class
    p_hat = softmax(z_{k != y} / T)          (over the K-1 non-target classes)
    TCKD = T^2 (1/B) sum_b KL(b^t || b^s)
    NCKD = T^2 (1/B) sum_b KL(p_hat^t || p_hat^s)
    L = alpha * TCKD + beta * NCKD

Paper defaults (CIFAR-100, ResNet32x4 -> ResNet8x4): alpha = 1, beta = 8, T = 4, CE weight 1, and the DKD term
multiplied by the warm-up factor ``min(epoch / 20, 1)`` (:func:`dkd_warmup`). mdistiller's configs use beta = 8 for
this pair and smaller beta (e.g. 2) for some others (``configs/cifar100/dkd/*.yaml``).

Reference code followed for what the paper leaves open: mdistiller ``mdistiller/distillers/DKD.py`` (the official
code): the ``T^2`` factor on both parts, the sum over classes and mean over the batch, and the warm-up's 1-based
epoch. Two numerical details differ from it on purpose, with the same value wherever the reference is finite:
the reference takes ``log`` of summed softmax probabilities (``-inf`` once ``p_y`` underflows in float32) and
excludes the target class from NCKD by subtracting 1000 from its logit; here the log-probabilities come from
log-sum-exp and the target class is removed by gathering the K-1 other columns, so both parts are finite for any
finite logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.checks import check_labels, check_logits, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "dkd", "dkd_parts", "dkd_warmup"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "dkd": (
        "student and teacher logits (B, K) of equal K >= 2",
        "labels: int class indices (B,) passed as target= (hard labels: refused with mixup/cutmix soft targets)",
        "the epoch, for the warm-up factor dkd_warmup(epoch, 20) the term is multiplied by",
    ),
}


def _non_target_index(target: Tensor, num_classes: int) -> Tensor:
    """``(B, K-1)`` indices of every class except ``target[b]``, in increasing order (no host sync)."""
    base = torch.arange(num_classes - 1, device=target.device).expand(target.shape[0], -1)
    return base + (base >= target[:, None]).long()


def _kl_rows(log_p_t: Tensor, log_p_s: Tensor) -> Tensor:
    """``sum_b sum_k p_t (log p_t - log p_s)`` for rows of log-probabilities."""
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum()


@fp32_compute
def dkd_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 4.0,
    target: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The two DKD parts ``(TCKD, NCKD)``, each already multiplied by ``T^2`` and averaged over the batch.

    ``TCKD = T^2 (1/B) sum_b KL([p_y, 1 - p_y]^t || [p_y, 1 - p_y]^s)``,
    ``NCKD = T^2 (1/B) sum_b KL(softmax(z^t_{k != y} / T) || softmax(z^s_{k != y} / T))``.
    See :func:`dkd`.
    """
    check_logits("dkd", student_logits, teacher_logits, min_classes=2)
    check_positive("dkd", temperature=temperature)
    y = check_labels("dkd", target, student_logits.shape[0])
    batch, num_classes = student_logits.shape
    zs, zt = student_logits / temperature, teacher_logits / temperature
    idx = _non_target_index(y, num_classes)
    zs_y, zt_y = zs.gather(1, y[:, None]), zt.gather(1, y[:, None])
    zs_n, zt_n = zs.gather(1, idx), zt.gather(1, idx)
    lse_s, lse_t = torch.logsumexp(zs, 1, keepdim=True), torch.logsumexp(zt, 1, keepdim=True)
    # log [p_y, 1 - p_y] with 1 - p_y = sum_{k != y} p_k, both from log-sum-exp
    log_b_s = torch.cat([zs_y - lse_s, torch.logsumexp(zs_n, 1, keepdim=True) - lse_s], dim=1)
    log_b_t = torch.cat([zt_y - lse_t, torch.logsumexp(zt_n, 1, keepdim=True) - lse_t], dim=1)
    tckd = _kl_rows(log_b_t, log_b_s) / batch
    nckd = _kl_rows(F.log_softmax(zt_n, dim=1), F.log_softmax(zs_n, dim=1)) / batch
    return tckd * temperature**2, nckd * temperature**2


@fp32_compute
def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
    target: Tensor | None = None,
) -> Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ``L = alpha * TCKD + beta * NCKD``.

    ``TCKD = T^2 (1/B) sum_b KL(b^t || b^s)`` with ``b = [p_y, 1 - p_y]``, ``p = softmax(z / T)``, ``y`` the
    ground-truth class; ``NCKD = T^2 (1/B) sum_b KL(p_hat^t || p_hat^s)`` with ``p_hat`` the softmax of the K-1
    non-target logits over ``T``. ``target`` (int class indices ``(B,)``) is required. With ``alpha = beta = 1``
    this is not KD: KD equals ``TCKD + (1 - p_y^t) NCKD`` (the paper's Eq. 1), which a test checks.

    Paper defaults: ``alpha=1, beta=8, T=4`` (ResNet32x4 -> ResNet8x4 on CIFAR-100), the term scaled by
    :func:`dkd_warmup`. Teacher logits are used as given (detaching is the caller's job).
    """
    tckd, nckd = dkd_parts(student_logits, teacher_logits, temperature=temperature, target=target)
    return alpha * tckd + beta * nckd


def dkd_warmup(epoch: float, warmup: float = 20.0) -> float:
    """DKD's linear warm-up factor ``min(epoch / warmup, 1)``.

    ``epoch`` counts from 1 as in mdistiller (its first epoch gets ``1 / warmup``); a fractional epoch (for a
    per-step ramp) is accepted. ``warmup <= 0`` means no warm-up (factor 1). The same factor with ``warmup = 20``
    scales ReviewKD's loss in mdistiller.
    """
    if epoch < 0:
        raise ValueError(f"dkd_warmup: epoch must be >= 0, got {epoch}")
    if warmup <= 0:
        return 1.0
    return min(float(epoch) / float(warmup), 1.0)


register_loss("dkd", kind="logit", inputs={"labels": "target"})(dkd)
