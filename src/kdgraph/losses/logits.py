"""Logit losses: supervised cross-entropy and the Hinton KD divergences.

Logits are ``(B, K)``. Teacher logits are used exactly as given; the caller is
responsible for detaching them. fp16/bf16 inputs are computed in float32 with
autocast disabled.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["cross_entropy", "kl_div", "soft_cross_entropy"]


def _check_logits(student: Tensor, teacher: Tensor) -> None:
    if student.ndim != 2 or student.shape != teacher.shape:
        raise ValueError(
            f"expected two (B, K) logit tensors of equal shape, got {tuple(student.shape)} and {tuple(teacher.shape)}"
        )
    if student.shape[0] == 0:
        raise ValueError("empty batch")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@fp32_compute
def cross_entropy(logits: Tensor, target: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy, mean over the batch:
    ``L = -(1/B) sum_b sum_k q[b,k] log softmax(z_b)_k``.

    ``target`` is either int class indices ``(B,)`` (``q`` = one-hot) or soft
    targets ``(B, K)`` (probabilities, e.g. from mixup). With smoothing ``e``,
    ``q <- (1 - e) q + e / K`` (same as :func:`torch.nn.functional.cross_entropy`).
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"expected (B, K) logits, got {tuple(logits.shape)}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if target.is_floating_point():
        if target.shape != logits.shape:
            raise ValueError(f"soft targets must match logits {tuple(logits.shape)}, got {tuple(target.shape)}")
        target = target.to(logits.dtype)
    elif target.shape != logits.shape[:1]:
        raise ValueError(f"class-index targets must have shape ({logits.shape[0]},), got {tuple(target.shape)}")
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction="mean")


@register_loss("kl", kind="logit")
@fp32_compute
def kl_div(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0, t_squared: bool = True
) -> Tensor:
    """Hinton KD divergence:
    ``L = T^2 (1/B) sum_b sum_k p_t log(p_t / p_s)``, ``p = softmax(z / T)``.

    The ``T^2`` factor (keeps gradient magnitudes comparable across T) is
    applied only when ``t_squared`` is true.
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    log_pt = F.log_softmax(teacher_logits / temperature, dim=1)
    loss = (log_pt.exp() * (log_pt - log_ps)).sum() / student_logits.shape[0]
    return loss * temperature**2 if t_squared else loss


@register_loss("ce_soft", kind="logit")
@fp32_compute
def soft_cross_entropy(
    student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0, t_squared: bool = True
) -> Tensor:
    """Cross-entropy against the teacher's softened distribution:
    ``L = -T^2 (1/B) sum_b sum_k p_t log p_s``, ``p = softmax(z / T)``.

    Equals :func:`kl_div` plus the teacher entropy (constant w.r.t. the
    student), so the student gradients are identical.
    """
    _check_logits(student_logits, teacher_logits)
    _check_temperature(temperature)
    log_ps = F.log_softmax(student_logits / temperature, dim=1)
    pt = torch.softmax(teacher_logits / temperature, dim=1)
    loss = -(pt * log_ps).sum() / student_logits.shape[0]
    return loss * temperature**2 if t_squared else loss
