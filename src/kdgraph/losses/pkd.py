"""PKD: feature imitation with the Pearson correlation coefficient, for detectors.

Cao, Zhang, Gao, Cheng, Cheng & Cheng, "PKD: General Distillation Framework for Object Detectors via Pearson
Correlation Coefficient", NeurIPS 2022.

Teacher and student FPN maps can differ a lot in magnitude (a heterogeneous teacher, a few channels or levels with
huge values); PKD compares them after standardising every channel, so only the *pattern* of each channel is
imitated, not its scale or offset::

    z(x)[b,c,h,w] = (x[b,c,h,w] - mean_c(x)) / (std_c(x) + eps)       per channel c, over the batch and the grid
                                                                     (mean and unbiased std over b, h, w)
    L = (1/2) mean_{b,c,h,w} (z(s) - z(t))^2

Up to ``eps`` this is ``(M - 1) / M * mean_c (1 - r_c)``, ``r_c`` the Pearson correlation of channel ``c`` of the
two maps over its ``M = B H W`` values (the test checks it), hence the name. It is invariant to a per-channel
positive scale and any per-channel offset of either map.

Defaults: ``eps = 1e-6``. The loss weight is the pair's ``weight``: 6 per FPN level (mmrazor's
``pkd_fpn_faster-rcnn_r101_faster-rcnn_r50_2x_coco``), 10 for RetinaNet X101 -> R50 (``pkd_fpn_retina_x101_retina_
r50_2x_coco``: 37.4 -> 40.8 mAP on COCO), one pair per FPN level (P3-P6 in those configs: the first four outputs of
the neck).

Reference code followed: mmrazor's ``PKDLoss`` (``models/losses/pkd_loss.py``, by the paper's authors):
``norm`` standardises each channel over ``(N, H, W)`` together (the batch's statistics, not each sample's), with
``torch.std``'s unbiased estimate and ``eps`` added to the std; the loss is ``F.mse_loss(norm_S, norm_T) / 2``. When
the grids differ it resizes the student bilinearly (``resize_stu=True``), which kdgraph's layout adapter does before
the loss (``F.interpolate(mode="bilinear", align_corners=False)``, the same call). Under data parallelism each
process standardises with its own slice of the batch, as mmrazor does.
"""

from __future__ import annotations

from torch import Tensor

from kdgraph.losses.checks import check_maps, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "pkd", "pkd_standardise"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "pkd": (
        "pair of maps (B, C, H, W) of equal shape: the student resized to the teacher's grid (bilinear) and, when "
        "the widths differ, projected to the teacher's width",
        "the whole batch of the step in one call: the statistics are the batch's (B H W values per channel)",
        "with an FPN: one pair per level (the spec names each level's pair, each with its weight)",
    ),
}


def pkd_standardise(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``(x - mean_c) / (std_c + eps)`` per channel ``c`` of ``x`` ``(B, C, ...)``, the mean and the unbiased std
    taken over the batch and the grid together; returned as ``(C, B * H * W)`` (PKD's ``norm``)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1)
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True)
    return (flat - mean) / (std + eps)


@register_loss("pkd", kind="feature", layouts=("map",))
@fp32_compute
def pkd(student: Tensor, teacher: Tensor, *, eps: float = 1e-6) -> Tensor:
    """PKD (Cao et al., NeurIPS 2022): ``L = (1/2) mean (z(s) - z(t))^2``, ``z`` each channel standardised over the
    batch and the grid (``(x - mean_c) / (std_c + eps)``, unbiased std): about ``mean_c (1 - Pearson r_c)``.

    ``student`` and ``teacher`` are maps of equal shape ``(B, C, H, W)`` with ``B * H * W >= 2``.
    """
    check_maps("pkd", student, teacher, same_channels=True)
    check_positive("pkd", eps=eps)
    if student[:, 0].numel() < 2:
        raise ValueError(f"pkd: a channel's standard deviation needs at least 2 values (B * H * W), got "
                         f"{tuple(student.shape)}")
    diff = pkd_standardise(student, eps) - pkd_standardise(teacher, eps)
    return (diff * diff).mean() / 2
