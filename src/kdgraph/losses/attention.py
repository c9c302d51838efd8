"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

A map's spatial attention is where its activations are large, whatever the channel: student and teacher widths
may differ. When their grids differ the loss brings the two maps to one grid itself (:func:`match_grids`), because
the published code it follows does it there: RepDistiller (and mdistiller) average-pool the larger map down to the
smaller grid before the attention maps are taken. NST (:mod:`kdgraph.losses.nst`) shares the same choice.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["GRIDS", "attention_map", "attention_transfer", "match_grids"]

Grid = Literal["pool", "interpolate"]
#: How :func:`match_grids` brings two maps of different grids to one.
GRIDS: tuple[str, ...] = ("pool", "interpolate")


def match_grids(name: str, s: Tensor, t: Tensor, grid: str = "pool") -> tuple[Tensor, Tensor]:
    """Two ``(B, C, H, W)`` maps on one spatial grid (widths untouched; maps of one grid are returned as they are).

    ``pool`` (RepDistiller's and mdistiller's AT and NST): each map larger than ``(min(H_s, H_t), min(W_s, W_t))``
    is adaptive-average-pooled to it, so the larger map comes down to the smaller grid (the references compare the
    heights of square maps; this is the same per dimension). ``interpolate``: the student's map is resized to the
    teacher's grid by bilinear interpolation (``align_corners=False``), which is what kdgraph's layout adapter did for
    these losses before issue #33 (upsampling the student in the zoo pairs) and what the specs measured then.
    """
    if s.ndim != 4 or t.ndim != 4 or s.shape[0] != t.shape[0]:
        raise ValueError(f"{name} needs two (B, C, H, W) maps of one batch, got {tuple(s.shape)} and "
                         f"{tuple(t.shape)}")
    if grid not in GRIDS:
        raise ValueError(f"{name}: grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    if s.shape[2:] == t.shape[2:]:
        return s, t
    if grid == "interpolate":
        return F.interpolate(s, size=tuple(t.shape[2:]), mode="bilinear", align_corners=False), t
    size = (min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3]))
    s = s if tuple(s.shape[2:]) == size else F.adaptive_avg_pool2d(s, size)
    t = t if tuple(t.shape[2:]) == size else F.adaptive_avg_pool2d(t, size)
    return s, t


def attention_map(x: Tensor, p: float = 2.0, eps: float = 1e-12) -> Tensor:
    """``a = q / max(||q||_2, eps)`` with ``q = mean_c |x_c|^p`` flattened over the grid: ``(B, C, H, W) -> (B, H*W)``."""
    if x.ndim != 4:
        raise ValueError(f"attention transfer compares (B, C, H, W) maps, got a tensor of shape {tuple(x.shape)}")
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), p=2.0, dim=1, eps=eps)


@register_loss("at", kind="feature", needs="any", layouts=("map",))
@fp32_compute
def attention_transfer(s: Tensor, t: Tensor, p: float = 2.0, grid: Grid = "pool") -> Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): ``L = (1/(B H W)) sum_{b,j} (a_s[b,j] - a_t[b,j])^2``
    with ``a`` the L2-normalised map ``mean_c |F_c|^p`` (:func:`attention_map`); any widths; maps of different
    grids are first brought to one (``grid``, :func:`match_grids`: ``pool`` the larger to the smaller grid).

    The reduction is the authors' code's (``(at(x) - at(y)).pow(2).mean()``, also RepDistiller's), a mean over the
    batch *and* the H·W positions, rather than the paper's per-sample norm: the published weights were tuned for it
    (the authors' code β = 1000 applied as β/2 = 500 per map; RepDistiller 1000 per map), so recipes carry over. It
    equals ``mean_b ||a_s[b] - a_t[b]||^2 / (H W)``. The channel mean (the code's) rather than the paper's sum only
    rescales ``q``, which the normalisation removes. ``|F|^p`` is the paper's (the code's ``pow(p)`` without the
    absolute value agrees for the default ``p = 2``). ``grid``: see :func:`match_grids` (``pool``, the default, is
    RepDistiller's; ``interpolate`` is what kdgraph did before issue #33).
    """
    if s.ndim != 4 or t.ndim != 4 or s.shape[0] != t.shape[0]:
        raise ValueError(f"attention transfer needs two (B, C, H, W) maps of one batch, got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    if s.shape[0] == 0:
        raise ValueError("empty batch")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p}")
    s, t = match_grids("attention transfer", s, t, grid)
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
