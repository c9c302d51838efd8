"""Similarity-Preserving (SP) distillation.

Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

Inputs that produce similar activations in the teacher should produce similar activations in the student: the
student matches the teacher's batch similarity matrix, whatever the widths::

    G = F F^T                             (B, B), F the flattened features (B, D)
    G~[i, :] = G[i, :] / ||G[i, :]||_2    (each row L2-normalised)
    L = (1/B^2) || G~^t - G~^s ||_F^2

Paper defaults: the activations at the end of the last stage (or of each stage), weight ``gamma = 3000`` on
CIFAR-10 (also RepDistiller's ``-b 3000`` and mdistiller's ``SP.LOSS.FEAT_WEIGHT = 3000`` on CIFAR-100).

Reference code followed: RepDistiller ``distiller_zoo/SP.py`` ("verified by original author") and mdistiller
``mdistiller/distillers/SP.py``: ``F.normalize`` of the rows (eps 1e-12), the sum of squares divided by ``B^2``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.checks import check_batch
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "similarity_matrix", "sp"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "sp": ("pair of tensors (B, ...) with the same batch, any widths and shapes (batch relations)",),
}


def similarity_matrix(x: Tensor) -> Tensor:
    """SP's row-normalised batch similarity ``G~`` of ``x`` ``(B, ...)``: ``G = x x^T``, each row L2-normalised."""
    f = x.reshape(x.shape[0], -1)
    return F.normalize(f @ f.T, dim=1)


@fp32_compute
def sp(student: Tensor, teacher: Tensor) -> Tensor:
    """Similarity-preserving loss (Tung & Mori, ICCV 2019): ``L = (1/B^2) ||G~^t - G~^s||_F^2``.

    ``G~`` = :func:`similarity_matrix` of the flattened features; student and teacher need only the same batch.
    """
    check_batch("sp", student, teacher)
    diff = similarity_matrix(teacher) - similarity_matrix(student)
    return (diff * diff).sum() / student.shape[0] ** 2


register_loss("sp", kind="relational", needs="any")(sp)
