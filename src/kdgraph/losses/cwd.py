"""Channel-wise Distillation (CWD) for dense prediction.

Shu, Liu, Gao, Yan & Shen, "Channel-wise Knowledge Distillation for Dense Prediction", ICCV 2021.

Each channel of a map is turned into a distribution over the spatial positions (a softmax over ``H * W`` at
temperature ``tau``), and the student's distribution of every channel is pulled towards the teacher's by their
KL divergence, so the student learns *where* each channel fires, most of all where it fires most::

    p^t_{b,c} = softmax_{hw}(t_{b,c,:} / tau),   p^s_{b,c} = softmax_{hw}(s_{b,c,:} / tau)
    L = tau^2 / (B C) sum_{b,c} sum_{hw} p^t_{b,c,hw} log(p^t_{b,c,hw} / p^s_{b,c,hw})

It takes feature maps (detection: every FPN level, one pair per level) and dense logits (segmentation: the
``(B, K, H, W)`` class scores before the upsampling, each class a "channel") alike; both must have equal shapes.

Defaults: ``tau = 1`` (every CWD config of mmrazor, segmentation and detection). The loss weight is the pair's
``weight``: 5 on the PSPNet logits (R101 -> R18, Cityscapes, 74.87 -> 75.54 mIoU, mmrazor's
``cwd_logits_pspnet_r101-d8_pspnet_r18-d8``), 10 on each FPN level for detection (mmrazor's ``cwd_fpn_*_coco``).

Reference code followed: the official ``irfanICMLL/TorchDistiller`` ``SemSeg-distill/utils/criterion.py``
(``CriterionCWD(norm_type="channel", divergence="kl")``: ``KLDivLoss(reduction="sum")`` of the channel softmaxes,
divided by ``N * C``, times ``tau^2``) and mmrazor's ``ChannelWiseDivergence`` (``models/losses/cwd.py``), which
computes the same sum with ``log_softmax`` on both sides; this module does as mmrazor does.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.checks import check_maps, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "cwd"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "cwd": (
        "pair of maps (B, C, H, W) of equal shape: feature maps (the student projected to the teacher's width and "
        "resized to its grid) or dense logits (B, K, H, W) of the same K classes",
        "with an FPN: one pair per level (the spec names each level's pair, each with its weight)",
    ),
}


@register_loss("cwd", kind="feature", layouts=("map",))
@fp32_compute
def cwd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): ``L = tau^2 / (B C) sum_{b,c} KL(p^t_{b,c} || p^s_{b,c})``,
    ``p_{b,c}`` the softmax over the H*W positions of channel c at temperature ``tau``.

    ``student`` and ``teacher`` are maps (or dense logits) of equal shape ``(B, C, H, W)``; ``temperature`` is
    ``tau``. The KL is summed over positions, averaged over channels and samples (official code and mmrazor).
    """
    check_maps("cwd", student, teacher, same_channels=True)
    check_positive("cwd", temperature=temperature)
    rows = student.shape[0] * student.shape[1]
    log_ps = F.log_softmax(student.reshape(rows, -1) / temperature, dim=1)
    log_pt = F.log_softmax(teacher.reshape(rows, -1) / temperature, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum() * temperature**2 / rows
