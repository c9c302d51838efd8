"""Correlation Congruence (CC).

Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation Congruence for Knowledge Distillation", ICCV 2019.

Beyond each instance, the student matches the teacher's *correlation between instances* of the batch, measured
with a Gaussian RBF kernel approximated by its Taylor series of order ``P``::

    k(x, y) = exp(-gamma ||x - y||^2) ~ exp(-2 gamma) sum_{p=0}^{P} (2 gamma)^p / p! (x . y)^p
    C[i, j] = k(f_i, f_j)                     (B, B), f the embedded features
    L = (1/B^2) || C^t - C^s ||_F^2

The expansion equals the RBF kernel (as ``P`` grows) for unit-norm features, where
``||x - y||^2 = 2 - 2 x . y``; the features are used as given, so an L2-normalising adapter makes the kernel the
RBF's truncation (torchdistill and the paper apply it to the outputs of a linear embedding). Defaults: the
Gaussian-RBF kernel with ``P = 2``, ``gamma = 0.4``, as torchdistill's ImageNet sample configuration
(``configs/sample/ilsvrc2012/cckd/resnet18_from_resnet50.yaml``: ``gamma: 0.4, max_p: 2``, a linear embedding of
the pooled feature to 128 dims on both sides, term weight 0.003).

Reference code followed: torchdistill ``torchdistill/losses/mid_level.py`` ``CCKDLoss`` (the Taylor series
including the ``p = 0`` term, times ``exp(-2 gamma)``; ``reduction="batchmean"`` divides by ``B^2``).
torchdistill takes the Frobenius norm itself (``torch.dist``), not its square; by default this function squares
it, as the paper's ``||.||_2^2``, and ``squared=False`` gives torchdistill's ``(1/B^2) ||C^t - C^s||_F``. The two
differ by the factor ``||C^t - C^s||_F``, which changes with the batch, so a weight tuned for one form (the 0.003
of torchdistill's configuration is tuned for the unsquared one) does not carry over to the other by a constant.
RepDistiller's ``distiller_zoo/CC.py`` is a different, author-provided variant (products of neighbouring
samples' absolute differences), not this kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from kdgraph.losses.checks import check_batch, check_positive
from kdgraph.losses.crd import CRDEmbed
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "CCEmbeddings", "cc", "cc_term", "rbf_taylor_kernel"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "cc": (
        "pooled vectors (B, D), any widths (batch relations); the paper embeds each model's feature with a "
        "trainable linear layer (a projector adapter on both sides) and the RBF reading assumes unit-norm vectors",
    ),
}


def rbf_taylor_kernel(x: Tensor, *, gamma: float = 0.4, order: int = 2) -> Tensor:
    """``C[i, j] = exp(-2 gamma) sum_{p=0}^{order} (2 gamma)^p / p! (x_i . x_j)^p`` for ``x`` ``(B, ...)``."""
    f = x.reshape(x.shape[0], -1)
    dot = f @ f.T
    total = torch.ones_like(dot)
    power = torch.ones_like(dot)
    for p in range(1, order + 1):
        power = power * dot
        total = total + (2.0 * gamma) ** p / math.factorial(p) * power
    return math.exp(-2.0 * gamma) * total


@fp32_compute
def cc(student: Tensor, teacher: Tensor, *, gamma: float = 0.4, order: int = 2, squared: bool = True) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019): ``L = (1/B^2) ||C^t - C^s||_F^2``.

    ``C`` = :func:`rbf_taylor_kernel` (the Gaussian RBF's Taylor expansion of order ``order`` = ``P``) of the
    flattened features; student and teacher need only the same batch. ``squared=False``: the Frobenius norm itself,
    ``(1/B^2) ||C^t - C^s||_F`` (torchdistill's ``CCKDLoss``; its gradient at ``C^t = C^s`` is taken as 0).
    """
    check_batch("cc", student, teacher)
    check_positive("cc", gamma=gamma)
    if order < 0 or int(order) != order:
        raise ValueError(f"cc: order must be an integer >= 0, got {order}")
    diff = rbf_taylor_kernel(teacher, gamma=gamma, order=order) - rbf_taylor_kernel(student, gamma=gamma, order=order)
    total = (diff * diff).sum()
    if not squared:  # sqrt at a floor: equal kernels give 0 with a zero (not NaN) gradient
        total = torch.where(total > 0, torch.sqrt(total.clamp_min(torch.finfo(total.dtype).tiny)), total)
    return total / student.shape[0] ** 2


class CCEmbeddings(nn.Module):
    """The loss-side module of ``loss: cc``: a trainable linear embedding of each model's feature to ``dim``, L2
    normalised (so the kernel's expansion is the RBF's), as the paper and torchdistill embed both sides."""

    def __init__(self, student_features: int, teacher_features: int, dim: int = 128) -> None:
        super().__init__()
        self.student = CRDEmbed(student_features, dim)
        self.teacher = CRDEmbed(teacher_features, dim)


def _embeddings(student: Any, teacher: Any, *, dim: int = 128) -> CCEmbeddings:
    return CCEmbeddings(student.channels, teacher.channels, dim)


@register_loss("cc", kind="relational", needs="vectors", module=_embeddings)
def cc_term(student: Tensor, teacher: Tensor, *, module: CCEmbeddings, gamma: float = 0.4, order: int = 2,
            squared: bool = True) -> Tensor:
    """Correlation congruence (Peng et al., ICCV 2019): ``L = (1/B^2) ||C^t - C^s||_F^2`` of the RBF kernel's order
    ``P`` Taylor expansion over the batch, each side embedded to ``dim`` by a trainable head (:func:`cc`;
    ``squared: false``: the norm unsquared, torchdistill's form)."""
    return cc(module.student(student), module.teacher(teacher), gamma=gamma, order=order, squared=squared)
