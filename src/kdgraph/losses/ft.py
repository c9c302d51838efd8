"""Factor Transfer (FT): a paraphraser of the teacher, a translator of the student, L1 between their factors.

Kim, Park & Kwak, "Paraphrasing Complex Network: Network Compression via Factor Transfer", NeurIPS 2018.

A *paraphraser* (a convolutional autoencoder on the teacher's last feature map, with ``k * C_t`` channels in the
middle: the paraphrase rate ``k``) is trained first, unsupervised, to reconstruct the teacher's map; its encoder
output is the teacher factor ``F_T``. The student's map goes through a *translator* (convolutions to the same
``k * C_t`` channels), giving ``F_S``. Then, with the paraphraser frozen::

    FT(F) = F / ||F||_2                         per sample, over the flattened factor
    L = || FT(F_S) - FT(F_T) ||_p               p = 1, as a mean over the B * D entries (see below)

Paper defaults: ``k = 0.5``, ``p = 1``, FT weight ``beta = 500`` on CIFAR (the official ``train_student.py``;
RepDistiller uses ``-b 200``); the paraphraser is trained for a few epochs before the student (the official
``train_Paraphraser.py``, 5 epochs by default; RepDistiller's ``init`` phase): a pre-stage. The paraphraser's
layers are 3x3 convolutions, each followed by LeakyReLU(0.1): encoder ``C -> C -> kC -> kC``, decoder (transposed
3x3 convolutions) ``kC -> kC -> C -> C``; the translator is the encoder's shape from the student's width.

Reference code followed: the official ``Jangho-Kim/Factor-Transfer-pytorch`` (``Models/FeatureProjection.py``,
``utils.FT``, ``train_student.py``): factors normalised per sample (``F.normalize`` of the flattened factor),
``nn.L1Loss`` between them, i.e. the mean of ``|.|`` over the ``B * D`` entries: the paper's per-sample 1-norm
divided by ``D`` (the ``beta = 500`` above is for this mean); the paraphraser's reconstruction loss is
``nn.L1Loss`` as well (:func:`ft_reconstruction`). torchdistill's ``FTLoss`` is the same. RepDistiller's
``FactorTransfer`` is a different loss (an attention-style channel mean of the maps), not used here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdgraph.losses.checks import check_batch
from kdgraph.losses.feature import flatten_pair, fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "FactorTransfer", "Paraphraser", "Translator", "factor_channels", "ft", "ft_reconstruction",
           "ft_term"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "ft": (
        "the teacher's last feature map (B, C_t, H, W) through Paraphraser.encode and the student's map "
        "(B, C_s, H, W) through Translator: two factors of equal shape (equal spatial grid)",
        "trainable Translator trained with the student and saved with the adapters",
        "a pre-stage: Paraphraser trained alone on ft_reconstruction of the teacher's map, then frozen "
        "(saved with the adapters, no gradient in the main stage)",
    ),
    "ft_reconstruction": (
        "the pre-stage loss: Paraphraser(teacher map) against the detached teacher map, equal shapes",
    ),
}


def _check_same(name: str, a: Tensor, b: Tensor, what_a: str, what_b: str) -> None:
    check_batch(name, a, b)
    if a.shape != b.shape:
        raise ValueError(f"{name}: {what_a} {tuple(a.shape)} and {what_b} {tuple(b.shape)} must have the same shape")


def factor_channels(teacher_channels: int, rate: float = 0.5) -> int:
    """Channels of the factor: ``round(rate * teacher_channels)`` (official code), at least 1."""
    if not rate > 0:
        raise ValueError(f"factor_channels: rate must be > 0, got {rate}")
    return max(1, int(round(teacher_channels * rate)))


def _conv_stack(channels: list[int], transposed: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:]):
        conv = nn.ConvTranspose2d if transposed else nn.Conv2d
        layers += [conv(c_in, c_out, kernel_size=3, stride=1, padding=1, bias=True), nn.LeakyReLU(0.1)]
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """FT's paraphraser: a 3x3 convolutional autoencoder on the teacher's map with a ``rate * C`` bottleneck.

    ``encode(x)`` is the teacher factor, ``forward(x)`` the reconstruction (trained in the pre-stage with
    :func:`ft_reconstruction`). Trained before the student, then frozen; saved with the adapters.
    """

    def __init__(self, channels: int, rate: float = 0.5) -> None:
        super().__init__()
        k = factor_channels(channels, rate)
        self.out_channels = k
        self.encoder = _conv_stack([channels, channels, k, k])
        self.decoder = _conv_stack([k, k, channels, channels], transposed=True)

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """FT's translator: the paraphraser encoder's shape (three 3x3 conv + LeakyReLU(0.1)) from the student's
    width ``in_channels`` to ``factor_channels``. Trained with the student; saved with the adapters.
    """

    def __init__(self, in_channels: int, factor_channels: int) -> None:
        super().__init__()
        self.encoder = _conv_stack([in_channels, in_channels, factor_channels, factor_channels])

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@fp32_compute
def ft(student: Tensor, teacher: Tensor, *, p: int = 1) -> Tensor:
    """Factor-transfer loss (Kim et al., NeurIPS 2018) between the student factor (translator output) and the
    teacher factor (paraphraser encoder output), of equal shape ``(B, ...)``:
    ``L = (1/(B D)) sum_{b,k} |FT(F_S)_{b,k} - FT(F_T)_{b,k}|^p``, ``FT(F)_b = F_b / max(||F_b||_2, 1e-12)``.

    ``p = 1`` (paper and official code: ``nn.L1Loss``, a mean over all entries); ``p = 2`` gives the mean squared
    difference.
    """
    if p not in (1, 2):
        raise ValueError(f"ft: p must be 1 or 2, got {p}")
    _check_same("ft", student, teacher, "student factor", "teacher factor")
    s, t = flatten_pair(student, teacher)
    diff = (F.normalize(s, dim=1) - F.normalize(t, dim=1)).abs()
    return diff.mean() if p == 1 else (diff * diff).mean()


@fp32_compute
def ft_reconstruction(reconstruction: Tensor, features: Tensor) -> Tensor:
    """The paraphraser's pre-stage loss: ``L = mean |P(x) - x|`` over all entries (``nn.L1Loss``, official code).

    ``features`` is the teacher's map ``x`` (detached by the caller), ``reconstruction`` = ``Paraphraser(x)``.
    """
    _check_same("ft_reconstruction", reconstruction, features, "reconstruction", "features")
    s, t = flatten_pair(reconstruction, features)
    return (s - t).abs().mean()


class FactorTransfer(nn.Module):
    """The loss-side module of ``loss: ft``: the paraphraser of the teacher's map and the translator of the
    student's. ``objective(s, t)`` is the paraphraser's own objective (:func:`ft_reconstruction`), trained by the
    stage that names the pair in ``objectives``; in the loss the paraphraser is frozen (no gradient reaches it)."""

    def __init__(self, student_channels: int, teacher_channels: int, rate: float = 0.5) -> None:
        super().__init__()
        self.paraphraser = Paraphraser(teacher_channels, rate)
        self.translator = Translator(student_channels, self.paraphraser.out_channels)

    def objective(self, student: Tensor, teacher: Tensor) -> Tensor:
        return ft_reconstruction(self.paraphraser(teacher), teacher)


def _factor_transfer(student: Any, teacher: Any, *, rate: float = 0.5) -> FactorTransfer:
    return FactorTransfer(student.channels, teacher.channels, rate)


@register_loss("ft", kind="feature", needs="same-grid", layouts=("map",), module=_factor_transfer)
def ft_term(student: Tensor, teacher: Tensor, *, module: FactorTransfer, p: int = 1) -> Tensor:
    """Factor transfer (Kim et al., NeurIPS 2018): ``L = mean |FT(translator(s)) - FT(paraphraser.encode(t))|^p``,
    ``FT(F) = F / ||F||_2`` per sample; the paraphraser is trained first (``objectives``), then frozen."""
    with torch.no_grad():
        factor = module.paraphraser.encode(teacher)
    return ft(module.translator(student), factor, p=p)
