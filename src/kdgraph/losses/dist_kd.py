"""DIST: distillation from a stronger teacher by inter- and intra-class Pearson relations.

Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.

Exact matching of probabilities (KL) is replaced by matching their *relations*: the Pearson correlation between
student and teacher probabilities of each sample across classes (inter-class) and of each class across the batch
(intra-class)::

    Y = softmax(z / T)                                          (B, K), rows = samples
    rho(a, b) = <a - mean(a), b - mean(b)> / (||a - mean(a)|| ||b - mean(b)|| + eps)
    L_inter = 1 - (1/B) sum_b rho(Y^s[b, :], Y^t[b, :])
    L_intra = 1 - (1/K) sum_k rho(Y^s[:, k], Y^t[:, k])
    L = T^2 (beta L_inter + gamma L_intra)

Paper defaults: beta = gamma = 1, T = 1 (ImageNet). CIFAR-100 (the official ``dist_cifar.yaml``): the KD weight
is 2 with T = 4 (``dist_t4``), i.e. beta = gamma = 2, T = 4 in this function's terms; ResNet32x4 -> ResNet8x4
76.31 (DIST README).

Reference code followed: ``hunto/image_classification_sota`` ``lib/models/losses/dist_kd.py`` (the official
code): ``eps = 1e-8`` added to the product of the norms, the ``T^2`` factor on both parts, the means as above.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdgraph.losses.checks import check_logits, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "dist_kd", "pearson_rows"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "dist_kd": (
        "student and teacher logits (B, K) of equal K",
        "a batch of more than one sample (the intra-class relation correlates over the batch; B = 1 gives 1)",
    ),
}


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row pair: ``<a_c, b_c> / (||a_c|| ||b_c|| + eps)``, ``x_c = x - mean(x)``."""
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    norms = torch.linalg.vector_norm(ac, dim=1) * torch.linalg.vector_norm(bc, dim=1)
    return (ac * bc).sum(dim=1) / (norms + eps)


@fp32_compute
def dist_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    eps: float = 1e-8,
) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): ``L = T^2 (beta L_inter + gamma L_intra)``.

    ``Y = softmax(z / T)``; ``L_inter = 1 - mean_b rho(Y^s[b, :], Y^t[b, :])``,
    ``L_intra = 1 - mean_k rho(Y^s[:, k], Y^t[:, k])``, ``rho`` = :func:`pearson_rows` (Pearson correlation with
    ``eps`` added to the product of the norms). Range ``[0, 2 T^2 (beta + gamma)]``.
    """
    check_logits("dist_kd", student_logits, teacher_logits)
    check_positive("dist_kd", temperature=temperature)
    ys = torch.softmax(student_logits / temperature, dim=1)
    yt = torch.softmax(teacher_logits / temperature, dim=1)
    inter = 1.0 - pearson_rows(ys, yt, eps).mean()
    intra = 1.0 - pearson_rows(ys.T, yt.T, eps).mean()
    return temperature**2 * (beta * inter + gamma * intra)


register_loss("dist", kind="logit")(dist_kd)
