"""Masked Generative Distillation (MGD).

Yang, Li, Shao, Shi, Yuan & Yuan, "Masked Generative Distillation", ECCV 2022.

Instead of imitating the teacher's map, the student must *generate* it from a randomly masked version of its own
(aligned) map, through a small generator that is trained with it::

    M[b, h, w] = 0 with probability lambda, else 1              (a random spatial mask, redrawn every step)
    G(x) = conv3x3(ReLU(conv3x3(x)))                             (C_t -> C_t -> C_t channels)
    L = alpha * (1/B) sum_{b,c,h,w} (G(S * M) - T)^2             (a sum over the map, divided by the batch)

where ``S`` is the student map aligned to the teacher's width (a 1x1 conv when widths differ: a projector
adapter). The mask is the only randomness of any loss here: :func:`mgd_mask` takes an explicit
``torch.Generator`` so that a resumed run redraws the same masks.

Paper defaults: ``lambda = 0.65``, ``alpha = 2e-5`` (detection and segmentation; the official ``det`` code).
The official *classification* code uses ``alpha = 7e-5``, ``lambda = 0.15`` and masks whole *channels*
(``torch.rand(N, C, 1, 1)``) rather than positions: ``mgd_mask(..., mode="channel")`` reproduces that.

Reference code followed: the official ``yzd-v/MGD`` (``det/mmdet/distillation/losses/mgd.py`` for the spatial
mask ``rand(N, 1, H, W) > 1 - lambda -> 0``, ``cls/mmcls/distillation/losses/mgd.py`` for the channel mask
``rand(N, C, 1, 1) < lambda -> 0``; both ``MSELoss(reduction="sum") / N`` times ``alpha``; generator conv3x3-ReLU-
conv3x3 with biases, PyTorch's default initialisation). The loss weight ``alpha`` is applied inside the function
(as in the official code), so the spec's term weight stays 1.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdgraph.losses.checks import check_maps, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss
from kdgraph.losses.state import RandomStream

__all__ = ["NEEDS", "MGDGenerator", "MaskedGeneration", "mgd", "mgd_mask", "mgd_term"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "mgd": (
        "pair of maps (B, C, H, W) with equal spatial grid; the student aligned to the teacher's width "
        "(1x1 conv projector when the widths differ)",
        "trainable MGDGenerator (conv3x3-ReLU-conv3x3 on the teacher's width) trained with the student and saved "
        "with the adapters: the loss takes the generator's output G(student * mask)",
        "a fresh random mask every step from mgd_mask with an explicit torch.Generator whose state is checkpointed",
    ),
}

MaskMode = Literal["spatial", "channel"]


def mgd_mask(
    like: Tensor,
    ratio: float = 0.65,
    *,
    generator: torch.Generator | None = None,
    mode: MaskMode = "spatial",
) -> Tensor:
    """A random 0/1 mask for the map ``like`` ``(B, C, H, W)``: each entry is 0 with probability ``ratio``.

    ``mode="spatial"`` draws one value per ``(b, h, w)`` (shape ``(B, 1, H, W)``, the paper and the official
    detection code); ``mode="channel"`` one per ``(b, c)`` (shape ``(B, C, 1, 1)``, the official classification
    code). The uniforms come from ``generator`` on its device (the global RNG on ``like``'s device when it is
    ``None``); the mask is returned on ``like``'s device in ``like``'s dtype. Same generator state -> same mask.
    """
    if like.ndim != 4:
        raise ValueError(f"mgd_mask: expected a (B, C, H, W) map, got {tuple(like.shape)}")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mgd_mask: ratio must be in [0, 1), got {ratio}")
    b, c, h, w = like.shape
    shape = (b, 1, h, w) if mode == "spatial" else (b, c, 1, 1) if mode == "channel" else None
    if shape is None:
        raise ValueError(f"mgd_mask: mode must be 'spatial' or 'channel', got {mode!r}")
    device = generator.device if generator is not None else like.device
    u = torch.rand(shape, generator=generator, device=device)
    return (u >= ratio).to(device=like.device, dtype=like.dtype)


class MGDGenerator(nn.Module):
    """MGD's generation block on the teacher's width ``channels``: ``conv3x3 -> ReLU -> conv3x3`` (with biases).

    ``forward(student, mask)`` returns ``G(student * mask)``; ``student`` is already aligned to ``channels``.
    Trained with the student; saved with the adapters.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.generation = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, student: Tensor, mask: Tensor) -> Tensor:
        return self.generation(student * mask)


@fp32_compute
def mgd(generated: Tensor, teacher: Tensor, *, alpha: float = 2e-5) -> Tensor:
    """MGD's loss (Yang et al., ECCV 2022): ``L = alpha * (1/B) sum_{b,c,h,w} (G(S * M) - T)^2``.

    ``generated`` = :class:`MGDGenerator` output ``G(S * M)``, ``teacher`` the teacher's map, of equal shape
    ``(B, C, H, W)``. A sum over the map divided by the batch (official ``MSELoss(reduction="sum") / N``).
    """
    check_maps("mgd", generated, teacher, same_channels=True)
    check_positive("mgd", alpha=alpha)
    diff = generated - teacher
    return alpha * (diff * diff).sum() / generated.shape[0]


class MaskedGeneration(nn.Module):
    """The loss-side module of ``loss: mgd``: the generator and the random stream its masks are drawn from (its
    state is checkpointed, so a resumed run draws the same masks)."""

    def __init__(self, channels: int, seed: int) -> None:
        super().__init__()
        self.generator = MGDGenerator(channels)
        self.rng = RandomStream(seed)


def _generation(student: Any, teacher: Any, *, seed: int) -> MaskedGeneration:
    if student.channels != teacher.channels:
        raise ValueError(f"mgd generates the teacher's {teacher.channels} channels from the student's {student.channels}"
                         "; give the pair projector: auto (or conv1x1)")
    return MaskedGeneration(teacher.channels, seed)


@register_loss("mgd", kind="feature", layouts=("map",), module=_generation, inputs=("seed",))
def mgd_term(student: Tensor, teacher: Tensor, *, module: MaskedGeneration, alpha: float = 2e-5,
             ratio: float = 0.65, mode: MaskMode = "spatial") -> Tensor:
    """MGD (Yang et al., ECCV 2022): ``L = alpha (1/B) sum (G(S * M) - T)^2``, a fresh mask ``M`` (a fraction
    ``ratio`` of zeros, per position or per channel) every step, the generator ``G`` trained with the student."""
    mask = mgd_mask(student, ratio, generator=module.rng.generator(), mode=mode)
    return mgd(module.generator(student, mask), teacher, alpha=alpha)
