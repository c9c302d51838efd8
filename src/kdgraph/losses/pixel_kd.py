"""Pixel-wise knowledge distillation for semantic segmentation.

Liu, Chen, Liu, Qin, Luo & Wang, "Structured Knowledge Distillation for Semantic Segmentation", CVPR 2019 (its
pixel-wise term); the form used by later work as its KD baseline (CIRKD, Yang et al., CVPR 2022).

Hinton's KD applied at every pixel of dense logits: the student's class distribution at each position is pulled
towards the teacher's, at temperature ``T``, and the divergences are averaged over the pixels::

    p^t_{b,:,h,w} = softmax_k(t_{b,:,h,w} / T),   p^s likewise
    L = T^2 / |P| sum_{(b,h,w) in P} sum_k p^t_{b,k,h,w} log(p^t_{b,k,h,w} / p^s_{b,k,h,w})

``P`` is every pixel, or, with ``ignore_index`` and the batch's label maps, the pixels whose label is not
``ignore_index`` (void and border pixels). Labels on another grid than the logits are resized to the logits' grid
by nearest neighbour first.

Defaults: ``T = 1``, every pixel (CIRKD's ``--kd-temperature 1``, its ``CriterionKD`` skips no pixel); the loss
weight is the pair's ``weight`` (CIRKD: ``--lambda-kd 1``). ``ignore_index: 255`` is the Cityscapes / VOC void label.

Reference code followed: CIRKD (Yang et al., CVPR 2022) ``losses/kd.py`` ``CriterionKD``: logits flattened to
``(B H W, K)`` rows, ``F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean") * T^2``, i.e. the KL
summed over classes and averaged over pixels. (The CWD repository's ``CriterionKD`` uses ``KLDivLoss()``'s
element-wise mean, which also divides by K and has no ``T^2``; CIRKD's normalisation is the one of KD.)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.checks import check_maps, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "pixel_kd"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "pixel_kd": (
        "dense logits (B, K, H, W) of both models, the same K classes, on one grid (the student's resized to the "
        "teacher's)",
        "labels: the batch's label maps (B, H', W') of int class indices, passed as target= (read only with "
        "ignore_index)",
    ),
}


def _valid_pixels(target: Tensor, grid: tuple[int, ...], batch: int, ignore_index: int) -> Tensor:
    """``(B, H, W)`` 1.0 where the label (resized to ``grid`` by nearest neighbour) is not ``ignore_index``."""
    if target.is_floating_point() or target.is_complex() or target.ndim != 3 or target.shape[0] != batch:
        raise ValueError(f"pixel_kd: ignore_index needs the batch's label maps, int class indices of shape ({batch}, "
                         f"H, W); got a {target.dtype} tensor of shape {tuple(target.shape)}")
    if tuple(target.shape[1:]) != grid:
        target = F.interpolate(target[:, None].double(), size=grid, mode="nearest")[:, 0]
    return (target != ignore_index).float()


@fp32_compute
def pixel_kd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0, ignore_index: Optional[int] = None,
             target: Optional[Tensor] = None) -> Tensor:
    """Pixel-wise KD for segmentation (Liu et al., CVPR 2019; as CIRKD's code computes it): ``L = T^2 / |P|
    sum_{pixels in P} KL(softmax(t_px / T) || softmax(s_px / T))``, the softmax over the K classes of each pixel.

    ``student`` and ``teacher`` are dense logits of equal shape ``(B, K, H, W)``. ``P`` is every pixel, or with
    ``ignore_index`` those whose label in ``target`` (``(B, H', W')`` int class indices, resized to ``(H, W)`` by
    nearest neighbour when the grids differ) is not ``ignore_index``; no valid pixel gives 0.
    """
    check_maps("pixel_kd", student, teacher, same_channels=True)
    check_positive("pixel_kd", temperature=temperature)
    log_ps = F.log_softmax(student / temperature, dim=1)
    log_pt = F.log_softmax(teacher / temperature, dim=1)
    per_pixel = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # (B, H, W)
    if ignore_index is None:
        return per_pixel.mean() * temperature**2
    if target is None:
        raise ValueError("pixel_kd: ignore_index needs the batch's label maps: pass target=<(B, H, W) int labels>")
    valid = _valid_pixels(target, tuple(per_pixel.shape[1:]), per_pixel.shape[0], ignore_index)
    valid = valid.to(device=per_pixel.device, dtype=per_pixel.dtype)
    return (per_pixel * valid).sum() / valid.sum().clamp_min(1.0) * temperature**2


register_loss("pixel_kd", kind="feature", layouts=("map",), inputs={"labels": "target"})(pixel_kd)
