"""Activation Boundary (AB) distillation.

Heo, Lee, Yun & Choi, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons",
AAAI 2019.

The student should put every neuron on the same side of the ReLU boundary as the teacher. The paper relaxes the
non-differentiable "same activation" objective into a hinge on the student's pre-activation ``s`` (after a
connector to the teacher's width) with margin ``mu``, driven by the sign of the teacher's pre-activation ``t``::

    l(s, t) = (s + mu)^2 * [s > -mu and t <= 0]   +   (s - mu)^2 * [s <= mu and t > 0]
    L = (1/B) sum_{b, c, h, w} l(s, t)

(the teacher neuron is off: push the student below ``-mu``; on: push it above ``+mu``). Paper defaults:
``mu = 1``; AB is a pre-stage: the student's feature layers and the connectors are trained on the AB loss alone
for some epochs (the official CIFAR-10 script's ``distill_epoch``; RepDistiller's ``init`` phase, 30 epochs),
then the student is trained on its task (with KD in the paper). The official code weights the stages 1, 1/2, 1/4
from the deepest and scales the sum by ``3 / 1000``; RepDistiller the same (``2^(i - n + 1)`` and ``/ 1000 * 3``).

Reference code followed: the official ``bhheo/AB_distillation`` (``criterion_alternative_L2``: sum of the hinge
terms, divided by the batch size). The connector (a 1x1 convolution + BatchNorm, RepDistiller's ``ConvReg``
without ReLU) is a projector adapter, not part of this module.
"""

from __future__ import annotations

from torch import Tensor

from kdgraph.losses.checks import check_maps, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "ab"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "ab": (
        "pre-activation taps (before the ReLU) of both models: pair of maps of equal shape",
        "a connector (1x1 conv + BatchNorm projector) from the student's width to the teacher's, trained in the "
        "pre-stage",
        "a pre-stage: the AB loss alone (student feature layers + connectors), then the task (CE + KD)",
    ),
}


@fp32_compute
def ab(student: Tensor, teacher: Tensor, *, margin: float = 1.0) -> Tensor:
    """Activation-boundary hinge (Heo et al., AAAI 2019), summed over positions and averaged over the batch:
    ``L = (1/B) sum [ (s + mu)^2 1[s > -mu, t <= 0] + (s - mu)^2 1[s <= mu, t > 0] ]``.

    ``s``/``t`` are the student's (connected) and the teacher's pre-activations, of equal shape ``(B, C, ...)``;
    ``mu`` = ``margin`` (paper 1). Only the sign of ``t`` is used, so no gradient reaches the teacher.
    """
    check_maps("ab", student, teacher, same_channels=True)
    check_positive("ab", margin=margin)
    t_on = teacher > 0
    off_term = (student + margin).pow(2) * ((student > -margin) & ~t_on)
    on_term = (student - margin).pow(2) * ((student <= margin) & t_on)
    return (off_term + on_term).sum() / student.shape[0]


register_loss("ab", kind="feature", layouts=("map",))(ab)
