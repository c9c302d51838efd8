"""Focal and Global Distillation (FGD) for detectors.

Yang, Li, Jiang, Gong, Yuan, Zhao & Yuan, "Focal and Global Knowledge Distillation for Detectors", CVPR 2022.

The imitation of an FPN map is split by the ground-truth boxes and weighted by where and in which channels the
teacher looks (*focal*), plus a term on the relations between positions (*global*)::

    M_fg[b,h,w] = max over the boxes j covering (h, w) of 1 / (h_j w_j)     (boxes scaled to the map's grid,
                                                                             h_j, w_j their extent in cells)
    M_bg[b] = [M_fg[b] = 0] / sum_{h,w} [M_fg[b] = 0]                       (the background, summing to 1)
    A^S(x)[b,h,w] = H W softmax_{hw}(mean_c |x[b,c,h,w]| / T)                (spatial attention)
    A^C(x)[b,c]   = C softmax_c(mean_{hw} |x[b,c,h,w]| / T)                   (channel attention)
    L_fg = (1/B) sum M_fg A^S(t) A^C(t) (s - t)^2,   L_bg the same with M_bg
    L_at = (1/B) [sum |A^C(s) - A^C(t)| + sum |A^S(s) - A^S(t)|]
    L_gl = (1/B) sum (G_s(s) - G_t(t))^2,   G(x) = x + W2 ReLU(LN(W1 sum_{hw} softmax_{hw}(W_k x) x))
    L = alpha L_fg + beta L_bg + gamma L_at + lambda L_gl

where the sums run over ``b, c, h, w`` and ``G_s``, ``G_t`` are two GcBlock-style context modules (one for each
model, both trained with the student: :class:`GlobalContext`).

Defaults: ``T = 0.5``, ``alpha = 1e-3``, ``beta = 5e-4``, ``gamma = 5e-4``, ``lambda = 5e-6``: the official configs of
the one-stage detectors (RetinaNet X101 -> R50: 37.4 -> 40.7 mAP; GFL, SOLO). Two-stage detectors (Faster / Mask
R-CNN) use ``alpha = 5e-5``, ``beta = 2.5e-5``, ``gamma = 5e-5``, ``lambda = 5e-7``; FCOS and RepPoints ``1.6e-3``,
``8e-4``, ``8e-4``, ``8e-6`` (FCOS with ``T = 0.8``). The class's own default ``gamma = 1e-3`` is used by no config.
One loss per FPN level, each with its own context modules, the weights applied inside (the pair's weight stays 1).

Reference code followed: the official ``yzd-v/FGD`` ``mmdet/distillation/losses/fgd.py`` (``FeatureLoss``):

* the boxes are scaled by ``x / img_w * W`` and ``y / img_h * H`` with ``(img_h, img_w)`` the image size the boxes
  are given in (mmdet's ``img_shape``, the resized image before padding), then ``floor`` of the top-left corner,
  ``ceil`` of the bottom-right; a box covers the cells ``hmin..hmax`` and ``wmin..wmax`` *inclusive* and its value is
  ``1 / ((hmax + 1 - hmin) (wmax + 1 - wmin))``; overlapping boxes keep the largest value;
* the attention weights and the masks multiply the squared difference (the official code multiplies both maps by
  their square roots, the same value), the teacher's attention weighting both maps; sums divided by the batch;
* ``G``: ``conv_mask`` a 1x1 conv to one channel, softmax over ``H W``; ``channel_add`` = 1x1 conv to ``C / 2``,
  ``LayerNorm([C / 2, 1, 1])``, ReLU, 1x1 conv back to ``C``; ``conv_mask`` Kaiming-normal (fan in) with zero bias,
  the last conv of ``channel_add`` zero (so ``G`` starts as the identity), the rest PyTorch's defaults.

One deliberate difference: a box whose scaled top-left corner floors below 0 is clipped to the map's first row or
column here; in the official code the negative start indexes from the end of the map (Python slicing), which drops
the box. Boxes inside the image (as COCO's are) give the same masks.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdgraph.losses.checks import check_maps, check_positive
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "FGDModule", "GlobalContext", "fgd", "fgd_attention", "fgd_masks", "fgd_parts", "fgd_term"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "fgd": (
        "pair of maps (B, C, H, W) of equal shape, C >= 2: one FPN level, the student projected to the teacher's "
        "width (the official code's 1x1 conv has a bias: projector linear) and on the teacher's grid",
        "targets: the batch's ground-truth boxes, one dict per image with boxes (N_i, 4) (x1, y1, x2, y2) in the "
        "pixels of the image the models see (torchvision's detection targets, after the resize)",
        "image_sizes: each image's (height, width) in those pixels (torchvision's ImageList.image_sizes: the image "
        "before batch padding, as the official code's img_shape)",
        "trainable FGDModule (the two GlobalContext modules of the global term) trained with the student and saved "
        "with the adapters; with an FPN one pair, hence one module, per level",
    ),
}

ImageSize = Union[Sequence[int], Tensor]


def fgd_masks(boxes: Sequence[Tensor], image_sizes: Sequence[ImageSize], grid: Sequence[int], *,
              dtype: torch.dtype = torch.float32, device: Optional[torch.device] = None) -> tuple[Tensor, Tensor]:
    """FGD's foreground and background masks ``(B, H, W)`` on the map's ``grid = (H, W)``.

    ``boxes[b]`` is ``(N_b, 4)`` ``(x1, y1, x2, y2)`` in the pixels of an image of size ``image_sizes[b] =
    (height, width)``. Foreground: each box scaled to the grid covers cells ``floor(y1')..ceil(y2')`` and
    ``floor(x1')..ceil(x2')`` inclusive with ``1 / (rows * columns)``, the largest value where boxes overlap.
    Background: 1 where no box is, divided by its count (all zero when boxes cover the map). An image without
    boxes is all background.
    """
    if len(boxes) != len(image_sizes):
        raise ValueError(f"fgd: {len(boxes)} images of boxes but {len(image_sizes)} image sizes")
    height, width = int(grid[0]), int(grid[1])
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    fg = []
    for b, (box, size) in enumerate(zip(boxes, image_sizes)):
        if box.ndim != 2 or box.shape[1] != 4:
            raise ValueError(f"fgd: the boxes of image {b} must be (N, 4) (x1, y1, x2, y2), got {tuple(box.shape)}")
        img_h, img_w = (float(v) for v in size)
        if not (img_h > 0 and img_w > 0):
            raise ValueError(f"fgd: image {b} has size {tuple(size)}; expected (height, width) > 0")
        box = box.to(device=device)
        if not box.is_floating_point():
            box = box.to(dtype)
        wmin = torch.floor(box[:, 0] / img_w * width).long()
        wmax = torch.ceil(box[:, 2] / img_w * width).long()
        hmin = torch.floor(box[:, 1] / img_h * height).long()
        hmax = torch.ceil(box[:, 3] / img_h * height).long()
        area = 1.0 / (hmax + 1 - hmin).to(dtype) / (wmax + 1 - wmin).to(dtype)
        in_rows = (rows[None] >= hmin[:, None]) & (rows[None] <= hmax[:, None])  # (N, H)
        in_cols = (cols[None] >= wmin[:, None]) & (cols[None] <= wmax[:, None])  # (N, W)
        cover = in_rows[:, :, None] & in_cols[:, None, :]
        value = torch.where(cover, area[:, None, None], torch.zeros((), dtype=dtype, device=device))
        fg.append(value.amax(dim=0) if box.shape[0] else torch.zeros(height, width, dtype=dtype, device=device))
    mask_fg = torch.stack(fg) if fg else torch.zeros(0, height, width, dtype=dtype, device=device)
    background = (mask_fg <= 0).to(dtype)
    mask_bg = background / background.sum(dim=(1, 2), keepdim=True).clamp_min(1.0)
    return mask_fg, mask_bg


def fgd_attention(x: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """FGD's attention of a map ``(B, C, H, W)``: spatial ``H W softmax_{hw}(mean_c |x| / T)`` ``(B, H, W)`` and
    channel ``C softmax_c(mean_{hw} |x| / T)`` ``(B, C)``."""
    b, c, h, w = x.shape
    value = x.abs()
    spatial = h * w * F.softmax(value.mean(dim=1).reshape(b, -1) / temperature, dim=1)
    channel = c * F.softmax(value.mean(dim=(2, 3)) / temperature, dim=1)
    return spatial.reshape(b, h, w), channel


class GlobalContext(nn.Module):
    """FGD's global-relation module (a GcBlock with channel addition): ``G(x) = x + channel_add(context(x))``.

    ``context(x) = sum_{hw} softmax_{hw}(conv_mask(x)) x`` ``(B, C, 1, 1)``; ``channel_add`` = 1x1 conv ``C -> C/2``,
    ``LayerNorm([C/2, 1, 1])``, ReLU, 1x1 conv ``C/2 -> C``. Initialised as the official code: ``conv_mask``
    Kaiming-normal (fan in, ReLU gain) with zero bias, the last conv zero, so ``G`` starts as the identity.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"fgd: the global context halves the width, which needs at least 2 channels, "
                             f"got {channels}")
        mid = channels // 2
        self.conv_mask = nn.Conv2d(channels, 1, kernel_size=1)
        self.channel_add = nn.Sequential(
            nn.Conv2d(channels, mid, kernel_size=1),
            nn.LayerNorm([mid, 1, 1]),
            nn.ReLU(),
            nn.Conv2d(mid, channels, kernel_size=1),
        )
        nn.init.kaiming_normal_(self.conv_mask.weight, mode="fan_in", nonlinearity="relu")
        nn.init.zeros_(self.conv_mask.bias)
        nn.init.zeros_(self.channel_add[-1].weight)
        nn.init.zeros_(self.channel_add[-1].bias)

    def context(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weights = F.softmax(self.conv_mask(x).reshape(b, 1, h * w), dim=2)
        return (x.reshape(b, c, h * w) * weights).sum(dim=2).reshape(b, c, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.channel_add(self.context(x))


class FGDModule(nn.Module):
    """The loss-side module of ``loss: fgd``: the student's and the teacher's :class:`GlobalContext` (both trained
    with the student; the teacher's map itself gets no gradient)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.student = GlobalContext(channels)
        self.teacher = GlobalContext(channels)


def _check_maps(student: Tensor, teacher: Tensor) -> None:
    check_maps("fgd", student, teacher, same_channels=True)
    if student.ndim != 4:
        raise ValueError(f"fgd: expected (B, C, H, W) maps, got {tuple(student.shape)} and {tuple(teacher.shape)}")


@fp32_compute
def fgd_parts(student: Tensor, teacher: Tensor, *, boxes: Sequence[Tensor], image_sizes: Sequence[ImageSize],
              module: FGDModule, temperature: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """FGD's four unweighted terms ``(L_fg, L_bg, L_at, L_gl)`` of one map pair (see :func:`fgd`)."""
    _check_maps(student, teacher)
    check_positive("fgd", temperature=temperature)
    if len(boxes) != student.shape[0]:
        raise ValueError(f"fgd: a batch of {student.shape[0]} maps but boxes for {len(boxes)} images")
    batch = student.shape[0]
    mask_fg, mask_bg = fgd_masks(boxes, image_sizes, student.shape[2:], dtype=student.dtype, device=student.device)
    spatial_s, channel_s = fgd_attention(student, temperature)
    spatial_t, channel_t = fgd_attention(teacher, temperature)
    diff = student - teacher
    weighted = diff * diff * spatial_t[:, None] * channel_t[:, :, None, None]
    fg = (weighted * mask_fg[:, None]).sum() / batch
    bg = (weighted * mask_bg[:, None]).sum() / batch
    attention = ((channel_s - channel_t).abs().sum() + (spatial_s - spatial_t).abs().sum()) / batch
    relation = module.student(student) - module.teacher(teacher)
    global_ = (relation * relation).sum() / batch
    return fg, bg, attention, global_


def fgd(student: Tensor, teacher: Tensor, *, boxes: Sequence[Tensor], image_sizes: Sequence[ImageSize],
        module: FGDModule, temperature: float = 0.5, alpha: float = 1e-3, beta: float = 5e-4, gamma: float = 5e-4,
        lambda_: float = 5e-6) -> Tensor:
    """FGD (Yang et al., CVPR 2022): ``L = alpha L_fg + beta L_bg + gamma L_at + lambda L_gl`` on one FPN level.

    ``L_fg``/``L_bg``: ``(1/B) sum M A^S(t) A^C(t) (s - t)^2`` with the box (area-normalised) and background
    (count-normalised) masks ``M`` (:func:`fgd_masks`) and the teacher's attention (:func:`fgd_attention`, at
    ``temperature``); ``L_at = (1/B) (sum |A^C(s) - A^C(t)| + sum |A^S(s) - A^S(t)|)``; ``L_gl = (1/B) sum (G_s(s) -
    G_t(t))^2`` with ``module``'s two :class:`GlobalContext`. ``student``/``teacher``: ``(B, C, H, W)`` of equal
    shape; ``boxes[b]``: ``(N_b, 4)`` ``(x1, y1, x2, y2)`` in an image of ``image_sizes[b] = (height, width)``.
    """
    fg, bg, attention, global_ = fgd_parts(student, teacher, boxes=boxes, image_sizes=image_sizes, module=module,
                                           temperature=temperature)
    return alpha * fg + beta * bg + gamma * attention + lambda_ * global_


def _context_modules(student: Any, teacher: Any) -> FGDModule:
    if student.channels != teacher.channels:
        raise ValueError(f"fgd compares the teacher's {teacher.channels} channels with the student's "
                         f"{student.channels}; give the pair projector: linear (the official 1x1 conv with bias) "
                         "or auto")
    return FGDModule(teacher.channels)


@register_loss("fgd", kind="feature", layouts=("map",), module=_context_modules, inputs=("targets", "image_sizes"))
def fgd_term(student: Tensor, teacher: Tensor, *, module: FGDModule,
             targets: Optional[Sequence[Mapping[str, Tensor]]] = None,
             image_sizes: Optional[Sequence[ImageSize]] = None, temperature: float = 0.5, alpha: float = 1e-3,
             beta: float = 5e-4, gamma: float = 5e-4, lambda_: float = 5e-6) -> Tensor:
    """FGD (Yang et al., CVPR 2022): ``L = alpha L_fg + beta L_bg + gamma L_at + lambda L_gl``: the squared difference
    weighted by the teacher's spatial and channel attention inside the ground-truth boxes and outside them, the
    attention maps matched, and the global context modules' outputs matched (:func:`fgd`)."""
    if targets is None or image_sizes is None:
        raise ValueError("fgd needs the batch's ground-truth boxes and image sizes (the step inputs targets and "
                         "image_sizes), which only a detection data source provides")
    boxes = []
    for b, target in enumerate(targets):
        if not isinstance(target, Mapping) or "boxes" not in target:
            raise ValueError(f"fgd: target {b} must be a dict with 'boxes' (N, 4), as torchvision's detection "
                             f"targets; got {type(target).__name__}")
        boxes.append(target["boxes"])
    return fgd(student, teacher, boxes=boxes, image_sizes=image_sizes, module=module, temperature=temperature,
               alpha=alpha, beta=beta, gamma=gamma, lambda_=lambda_)
