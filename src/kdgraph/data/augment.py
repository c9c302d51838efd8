"""Batch-level, device-agnostic augmentations on image tensors ``(B, C, H, W)``.

Two ways to give the random numbers:

- **From a generator** (``random_crop_flip``, ``random_resized_crop_flip``, ``mixup``, ``cutmix``): an optional
  ``torch.Generator`` (CPU or on ``x.device``) draws the numbers of the whole batch; they are moved to ``x.device``,
  so the same generator state gives the same augmentation on CPU and GPU. Mixup / CutMix then follow the "function
  matching" recipe of Beyer et al. 2022 with the batch as the pool of partners: one ratio per batch,
  ``a ~ Beta(alpha, alpha)``, ``a <- max(a, 1 - a)``, and the partner of sample ``i`` is sample ``i - 1``
  (``torch.roll(x, 1, dims=0)``).
- **Per image** (``crop_flip_offsets``, ``resized_crop_boxes``, ``cutmix_boxes``, ``mix_images``, ``paste_boxes``,
  ``mix_targets``): the numbers come as uniforms, one row per image, and the mixing partner as a second batch. This
  is what kdgraph's training and its teacher store use (``kdgraph.data.views``): every number then depends only on
  ``(seed, view, image)`` (``kdgraph.data.draws``), one ratio and one partner per image.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import DataError

__all__ = ["crop_flip_params", "crop_flip", "random_crop_flip", "resized_crop_params", "resized_crop_flip",
           "random_resized_crop_flip", "sample_mix_ratio", "mixup", "cutmix_box", "cutmix", "crop_flip_offsets",
           "resized_crop_boxes", "cutmix_boxes", "mix_images", "paste_boxes", "mix_targets"]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _check_batch(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise DataError(f"{name} expects a batch tensor of shape (B, C, H, W), got {shape}.")


def crop_flip_params(
    batch: int,
    padding: int,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    draw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The random numbers of :func:`random_crop_flip` for ``batch`` samples: crop offsets ``(oy, ox)`` in
    ``[0, 2*padding]`` (into the padded image) and flip flags, all ``(batch,)`` on the generator's device.

    ``draw=(offset, total)``: the numbers of a whole batch of ``total`` are drawn and rows ``offset:offset+batch``
    returned (a data-parallel shard), so the shards of all processes together equal one unsharded draw. With
    ``padding == 0`` no offsets are drawn (zeros), without ``flip`` no flags (all False)."""
    offset, total = draw if draw is not None else (0, batch)
    if offset < 0 or offset + batch > total:
        raise DataError(f"random_crop_flip: draw={draw!r} does not hold a batch of {batch} at that offset.")
    gdev = _gen_device(generator)
    rows = slice(offset, offset + batch)
    zeros = torch.zeros(batch, dtype=torch.int64, device=gdev)
    oy = ox = zeros
    if padding > 0 and batch > 0:
        oy = torch.randint(0, 2 * padding + 1, (total,), generator=generator, device=gdev)[rows]
        ox = torch.randint(0, 2 * padding + 1, (total,), generator=generator, device=gdev)[rows]
    flips = torch.zeros(batch, dtype=torch.bool, device=gdev)
    if flip and batch > 0:
        flips = torch.rand((total,), generator=generator, device=gdev)[rows] < 0.5
    return oy, ox, flips


def _fill_value(fill: float | Sequence[float], x: torch.Tensor) -> torch.Tensor | float:
    """``fill`` as a scalar, or as a ``(1, C, 1, 1)`` tensor of one value per channel of ``x``."""
    if isinstance(fill, (int, float)):
        return float(fill)
    values = [float(v) for v in fill]
    if len(values) == 1:
        return values[0]
    if len(values) != x.shape[1]:
        raise DataError(f"random_crop_flip: fill has {len(values)} values for {x.shape[1]} channels.")
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)


def crop_flip(
    x: torch.Tensor,
    oy: torch.Tensor,
    ox: torch.Tensor,
    flips: torch.Tensor,
    padding: int,
    fill: float | Sequence[float] = 0.0,
) -> torch.Tensor:
    """Pad ``x`` by ``padding`` on every side with ``fill`` (one value, or one per channel), crop each sample
    ``i`` at ``(oy[i], ox[i])`` of the padded image back to ``(H, W)``, and flip the samples whose flag is set.

    Per sample this is torchvision's ``RandomCrop(size, padding, fill)`` at the given offsets followed by
    ``hflip``; here for the whole batch at once, on ``x``'s device."""
    _check_batch(x, "random_crop_flip")
    if padding < 0:
        raise DataError(f"random_crop_flip: padding must be >= 0, got {padding}.")
    b, c, h, w = x.shape
    out = x
    if padding > 0 and b > 0:
        value = _fill_value(fill, x)
        if isinstance(value, float):
            xp = F.pad(x, (padding, padding, padding, padding), mode="constant", value=value)
        else:  # a per-channel colour: pad with 0, then paint the border
            xp = F.pad(x, (padding, padding, padding, padding), mode="constant", value=0.0)
            inside = torch.zeros((1, 1, h + 2 * padding, w + 2 * padding), dtype=torch.bool, device=x.device)
            inside[..., padding:padding + h, padding:padding + w] = True
            xp = torch.where(inside, xp, value)
        oy, ox = oy.to(x.device), ox.to(x.device)
        rows = oy[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
        cols = ox[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
        bidx = torch.arange(b, device=x.device)[:, None, None]
        # advanced indices separated by a slice -> result is (B, H, W, C)
        out = xp[bidx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()
    if b > 0 and bool(flips.any()):
        out = torch.where(flips.to(x.device)[:, None, None, None], out.flip(3), out)
    return out


def random_crop_flip(
    x: torch.Tensor,
    padding: int = 4,
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    fill: float | Sequence[float] = 0.0,
    draw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per-sample pad-and-random-crop (same output size) plus random horizontal flip.

    ``x`` is padded by ``padding`` pixels with ``fill`` on every side (one value, or one per channel: to pad
    normalised images with black, pass ``(0 - mean) / std`` per channel), then each sample gets its own crop offset
    in ``[0, 2*padding]`` and, if ``flip``, a horizontal flip with probability 1/2 (:func:`crop_flip_params`,
    :func:`crop_flip`). ``draw=(offset, total)``: ``x`` is rows ``offset:offset+B`` of a batch of ``total`` (a
    data-parallel shard); the random numbers of the whole batch are drawn and this shard's are used, so the shards
    of all processes together equal one unsharded call.
    """
    _check_batch(x, "random_crop_flip")
    if padding < 0:
        raise DataError(f"random_crop_flip: padding must be >= 0, got {padding}.")
    oy, ox, flips = crop_flip_params(x.shape[0], padding, generator, flip=flip, draw=draw)
    return crop_flip(x, oy, ox, flips, padding, fill)


def resized_crop_params(
    batch: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    draw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of :func:`random_resized_crop_flip` for ``batch`` samples: crop boxes ``(batch, 4)``
    (float64, on the generator's device) and flip flags ``(batch,)``.

    A box is ``(top, left, height, width)`` as fractions of the image's height and width: the area fraction
    ``s ~ U(scale)`` and the aspect ratio ``r`` log-uniform in ``ratio`` give ``width = min(1, sqrt(s r))`` and
    ``height = min(1, sqrt(s / r))``; ``top ~ U(0, 1 - height)`` and ``left ~ U(0, 1 - width)`` place it uniformly
    where it fits. ``draw=(offset, total)``: the numbers of a whole batch of ``total`` are drawn and rows
    ``offset:offset+batch`` returned (a data-parallel shard). Without ``flip`` every flag is False (the same numbers
    are drawn)."""
    offset, total = draw if draw is not None else (0, batch)
    if not 0 <= offset <= total - batch:
        raise DataError(f"random_resized_crop_flip: draw={draw!r} does not hold a batch of {batch} at that offset.")
    gdev = _gen_device(generator)
    u = torch.rand((total, 5), generator=generator, device=gdev, dtype=torch.float64)[offset:offset + batch]
    return resized_crop_boxes(u, scale, ratio, flip=flip)


def resized_crop_boxes(
    u: torch.Tensor,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    *,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes and flips of :func:`resized_crop_params` from ``(B, 5)`` float64 numbers uniform in [0, 1): area
    from ``u[:, 0]``, log aspect ratio from ``u[:, 1]``, ``left`` from ``u[:, 2]``, ``top`` from ``u[:, 3]``, a flip
    where ``u[:, 4] < 1/2``. The generator's draw and the per-image draw (``kdgraph.data.draws``) share it."""
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise DataError(f"random_resized_crop_flip: bad scale {scale} or ratio {ratio}.")
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    width = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    height = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    boxes = torch.stack([(1 - height) * u[:, 3], (1 - width) * u[:, 2], height, width], dim=1)
    return boxes, (u[:, 4] < 0.5) & flip


def resized_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop each sample's box ``(top, left, height, width)`` (fractions of the image, :func:`resized_crop_params`)
    and resample it bilinearly to ``(H, W)``, mirrored where ``flips`` is set.

    Output pixel ``(i, j)`` reads the input at ``(top·H + (i + 1/2)·height − 1/2, left·W + (j + 1/2)·width − 1/2)``
    (pixel centres; ``j`` becomes ``W − 1 − j`` when flipped), coordinates clamped to the image: one ``grid_sample``
    for the whole batch, on ``x``'s device, in ``x``'s dtype (float32 for integer images)."""
    _check_batch(x, "random_resized_crop_flip")
    b, _, h, w = x.shape
    boxes = boxes.to(x.device, torch.float64)
    top, left, height, width = boxes.unbind(1)
    mirror = torch.where(flips.to(x.device), -1.0, 1.0).to(torch.float64)
    # the sampling grid in [-1, 1] units: an axis-aligned affine map of the output pixel centres, written per axis
    # (what F.affine_grid computes with a batched matmul over every pixel, 4x slower on a CPU), in float64
    cols = (2 * torch.arange(w, dtype=torch.float64, device=x.device) + 1) / w - 1
    rows = (2 * torch.arange(h, dtype=torch.float64, device=x.device) + 1) / h - 1
    gx = (width * mirror)[:, None] * cols[None, :] + (2 * left + width - 1)[:, None]  # (B, W)
    gy = height[:, None] * rows[None, :] + (2 * top + height - 1)[:, None]  # (B, H)
    dtype = x.dtype if x.is_floating_point() else torch.float32
    grid = torch.stack([gx[:, None, :].expand(b, h, w), gy[:, :, None].expand(b, h, w)], dim=-1).to(dtype)
    return F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop_flip(
    x: torch.Tensor,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    *,
    flip: bool = True,
    draw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Per-sample random resized crop (the "inception crop") plus random horizontal flip, at the input size.

    Each sample draws an area fraction ``s ~ U(scale)`` and an aspect ratio ``r`` log-uniform in ``ratio``; the crop
    is ``sqrt(s r)`` of the width by ``sqrt(s / r)`` of the height (each at most 1), placed uniformly where it fits,
    and resampled bilinearly back to ``(H, W)`` with one ``grid_sample`` for the whole batch (on the device):
    :func:`resized_crop_params`, then :func:`resized_crop_flip`. ``draw=(offset, total)``: ``x`` is rows
    ``offset:offset+B`` of a batch of ``total`` (a data-parallel shard); the numbers of the whole batch are drawn and
    this shard's rows used, so every process crops as one process would.
    """
    _check_batch(x, "random_resized_crop_flip")
    boxes, flips = resized_crop_params(x.shape[0], scale, ratio, generator, flip=flip, draw=draw)
    return resized_crop_flip(x, boxes, flips)


def sample_mix_ratio(alpha: float, generator: torch.Generator | None = None) -> float:
    """Draw ``a ~ Beta(alpha, alpha)`` and return ``max(a, 1 - a)`` (in [0.5, 1]).

    ``alpha <= 0`` disables mixing (returns 1.0) without consuming randomness.
    """
    if alpha is None or alpha <= 0:
        return 1.0
    # torch's Beta sampler takes no generator: draw a seed from the generator and sample
    # with numpy, so results depend only on the generator state.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=_gen_device(generator)).item())
    a = float(np.random.default_rng(seed).beta(alpha, alpha))
    return max(a, 1.0 - a)


def _mix_targets(y: torch.Tensor | None, a: float) -> torch.Tensor | None:
    if y is None:
        return None
    if not torch.is_floating_point(y):
        y = y.float()
    return a * y + (1.0 - a) * torch.roll(y, 1, dims=0)


def mixup(
    x: torch.Tensor,
    y_onehot: torch.Tensor | None = None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    ratio: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mixup: ``x~ = a*x + (1-a)*roll(x, 1, 0)`` and the same for the (one-hot/soft) targets.

    ``ratio`` fixes ``a`` instead of sampling it. ``y_onehot`` may be ``None`` (pure function
    matching); then ``None`` is returned as targets.
    """
    _check_batch(x, "mixup")
    a = sample_mix_ratio(alpha, generator) if ratio is None else float(ratio)
    xm = a * x + (1.0 - a) * torch.roll(x, 1, dims=0)
    return xm, _mix_targets(y_onehot, a)


def cutmix_box(
    h: int, w: int, ratio: float, generator: torch.Generator | None = None
) -> tuple[int, int, int, int]:
    """Box ``(y0, y1, x0, x1)`` of nominal area ``(1 - ratio) * h * w`` with a uniformly random
    centre, clipped to the image (so the real area can be smaller)."""
    cut = math.sqrt(max(0.0, 1.0 - ratio))
    ch, cw = int(round(h * cut)), int(round(w * cut))
    gdev = _gen_device(generator)
    cy = int(torch.randint(0, h, (1,), generator=generator, device=gdev).item())
    cx = int(torch.randint(0, w, (1,), generator=generator, device=gdev).item())
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch - ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw - cw // 2, w)
    return y0, y1, x0, x1


def cutmix(
    x: torch.Tensor,
    y_onehot: torch.Tensor | None = None,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    ratio: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CutMix: paste a box of area ``(1 - a)`` from ``roll(x, 1, 0)`` into every sample.

    The same box is used for the whole batch; targets are weighted by the area actually
    pasted (after clipping to the image): ``lam = 1 - box_area / (H*W)``,
    ``y~ = lam*y + (1-lam)*roll(y, 1, 0)``.
    """
    _check_batch(x, "cutmix")
    a = sample_mix_ratio(alpha, generator) if ratio is None else float(ratio)
    _, _, h, w = x.shape
    y0, y1, x0, x1 = cutmix_box(h, w, a, generator)
    out = x.clone()
    out[:, :, y0:y1, x0:x1] = torch.roll(x, 1, dims=0)[:, :, y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return out, _mix_targets(y_onehot, lam)


# -- per image ---------------------------------------------------------------------------------------------------------
# The numbers arrive as uniforms, one row per image (kdgraph.data.draws), and the mixing partner as a second batch:
# what kdgraph's training and its teacher store use, so that a view depends on (seed, view, image) alone.

def crop_flip_offsets(u: torch.Tensor, padding: int, *, flip: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The offsets and flips of :func:`crop_flip` from ``(B, 3)`` numbers uniform in [0, 1): ``oy = ⌊u₀·(2p + 1)⌋``,
    ``ox = ⌊u₁·(2p + 1)⌋`` (int64), a flip where ``u₂ < 1/2`` (and ``flip``)."""
    span = 2 * padding + 1
    oy = (u[:, 0] * span).floor().to(torch.int64).clamp(max=span - 1)
    ox = (u[:, 1] * span).floor().to(torch.int64).clamp(max=span - 1)
    return oy, ox, (u[:, 2] < 0.5) & flip


def cutmix_boxes(ratio: torch.Tensor, u: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the box :func:`cutmix_box` draws for a ratio ``ratio[b]``, its centre from ``(B, 2)`` uniforms
    (``cy = ⌊u₀·h⌋``, ``cx = ⌊u₁·w⌋``): boxes ``(B, 4)`` int64 ``(y0, y1, x0, x1)`` of nominal area
    ``(1 − ratio)·h·w`` clipped to the image, and the label weight ``λ = 1 − box area / (h·w)`` (float64)."""
    cut = torch.sqrt((1.0 - ratio.to(torch.float64)).clamp(min=0.0))
    ch, cw = torch.round(h * cut).to(torch.int64), torch.round(w * cut).to(torch.int64)
    cy = (u[:, 0] * h).floor().to(torch.int64).clamp(max=h - 1)
    cx = (u[:, 1] * w).floor().to(torch.int64).clamp(max=w - 1)
    y0, y1 = (cy - ch // 2).clamp(min=0), (cy + ch - ch // 2).clamp(max=h)
    x0, x1 = (cx - cw // 2).clamp(min=0), (cx + cw - cw // 2).clamp(max=w)
    boxes = torch.stack([y0, y1, x0, x1], dim=1)
    lam = 1.0 - ((y1 - y0) * (x1 - x0)).to(torch.float64) / float(h * w)
    return boxes, lam


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.device, x.dtype).view(-1, *([1] * (x.dim() - 1)))


def mix_images(x: torch.Tensor, partner: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """Mixup with one partner and one ratio per image: ``x̃[b] = a[b]·x[b] + (1 − a[b])·partner[b]``."""
    a = _per_image(ratio, x)
    return a * x + (1.0 - a) * partner


def paste_boxes(x: torch.Tensor, partner: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """CutMix with one partner and one box per image: the box ``(y0, y1, x0, x1)`` of ``partner[b]`` pasted into
    ``x[b]``."""
    _check_batch(x, "cutmix")
    h, w = x.shape[-2:]
    boxes = boxes.to(x.device)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    inside_y = (rows[None, :] >= boxes[:, 0:1]) & (rows[None, :] < boxes[:, 1:2])  # (B, H)
    inside_x = (cols[None, :] >= boxes[:, 2:3]) & (cols[None, :] < boxes[:, 3:4])  # (B, W)
    inside = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]  # (B, 1, H, W)
    return torch.where(inside, partner, x)


def mix_targets(y: torch.Tensor, y_partner: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Soft targets of a mixed batch, float32: ``λ[b]·y[b] + (1 − λ[b])·y_partner[b]`` (one-hot or soft rows)."""
    lam = lam.to(y.device, torch.float32)[:, None]
    return lam * y.float() + (1.0 - lam) * y_partner.to(y.device).float()
