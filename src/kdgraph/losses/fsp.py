"""Flow of Solution Procedure (FSP) matrices.

Yim, Joo, Bae & Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning", CVPR 2017.

The "flow" between two layers of one network is the Gram matrix of their channels over the spatial positions;
the student matches the teacher's flow matrices::

    G(F1, F2)[i, j] = (1/(H W)) sum_{h,w} F1[i, h, w] F2[j, h, w]         (C1, C2) per sample
    L = (1/B) sum_b || G(S1_b, S2_b) - G(T1_b, T2_b) ||_F^2

so FSP is a function of four tensors: two taps per model. The student's flow must have the teacher's shape
``(C1, C2)``: equal widths at both taps (or projectors). Paper defaults: the flows between the input and output of
each stage of the residual network (the same grid at both taps), equal weights across stages; FSP is a pre-stage
in the paper (the student is first trained on the FSP loss alone, then on its task). RepDistiller runs it as an
initialisation stage and uses weight 50 on CIFAR-100 (``-b 50``, its ``init`` phase).

Reference code followed for what the paper leaves open: RepDistiller ``distiller_zoo/FSP.py``: when the two taps
of one model have different grids, the larger map is adaptive-average-pooled to the smaller grid before the
product (torchdistill max-pools instead). Reduction: the paper's squared Frobenius norm per sample, averaged over
the batch; RepDistiller takes the mean over all ``B * C1 * C2`` entries (this loss divided by ``C1 * C2``) and
torchdistill the sum of per-row L2 norms divided by ``B``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "fsp", "fsp_matrix"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "fsp": (
        "two taps per model: maps (B, C1, H1, W1) and (B, C2, H2, W2) of the student, and two of the teacher",
        "the student's C1 and C2 equal to the teacher's (projectors at both student taps otherwise)",
        "a pre-stage (the paper trains on FSP alone first, then on the task)",
    ),
}


def _check_map(name: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"fsp: {name} must be a (B, C, H, W) map, got {tuple(x.shape)}")


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """The flow matrix ``G[b, i, j] = (1/(H W)) sum_{h,w} first[b, i, h, w] second[b, j, h, w]``, ``(B, C1, C2)``.

    When the grids differ, the larger map is adaptive-average-pooled to the smaller grid (RepDistiller).
    """
    _check_map("first", first)
    _check_map("second", second)
    if first.shape[0] != second.shape[0]:
        raise ValueError(f"fsp: the two taps have different batch sizes: {first.shape[0]} vs {second.shape[0]}")
    h, w = min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3])
    if first.shape[2:] != (h, w):
        first = F.adaptive_avg_pool2d(first, (h, w))
    if second.shape[2:] != (h, w):
        second = F.adaptive_avg_pool2d(second, (h, w))
    a = first.reshape(first.shape[0], first.shape[1], -1)
    b = second.reshape(second.shape[0], second.shape[1], -1)
    return torch.bmm(a, b.transpose(1, 2)) / (h * w)


@fp32_compute
def fsp(student_first: Tensor, student_second: Tensor, teacher_first: Tensor, teacher_second: Tensor) -> Tensor:
    """FSP (Yim et al., CVPR 2017): ``L = (1/B) sum_b ||G(S1, S2)_b - G(T1, T2)_b||_F^2``.

    ``G`` = :func:`fsp_matrix`, the ``(C1, C2)`` flow between two taps of one model. The student's and the
    teacher's flows must have the same shape and batch.
    """
    gs = fsp_matrix(student_first, student_second)
    gt = fsp_matrix(teacher_first, teacher_second)
    if gs.shape != gt.shape:
        raise ValueError(
            f"fsp: the student's flow is {tuple(gs.shape[1:])} (C1, C2) but the teacher's is {tuple(gt.shape[1:])}"
            f" (batch {gs.shape[0]} vs {gt.shape[0]}); projectors must give the student the teacher's widths"
        )
    if gs.shape[0] == 0:
        raise ValueError("fsp: empty batch")
    diff = gs - gt
    return (diff * diff).sum() / gs.shape[0]


# the student's widths must be the teacher's at both taps (a projector each under projector: auto); grids are free
register_loss("fsp", kind="feature", needs="same-width", layouts=("map",), taps=2)(fsp)
