"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017, "Paying More Attention to Attention").

A map's spatial attention is where its activations are large, whatever the channel: student and teacher widths
may differ, their grids must match (the planner resizes the student map to the teacher's grid).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["attention_map", "attention_transfer"]


def attention_map(x: Tensor, p: float = 2.0, eps: float = 1e-12) -> Tensor:
    """``a = q / max(||q||_2, eps)`` with ``q = mean_c |x_c|^p`` flattened over the grid: ``(B, C, H, W) -> (B, H*W)``."""
    if x.ndim != 4:
        raise ValueError(f"attention transfer compares (B, C, H, W) maps, got a tensor of shape {tuple(x.shape)}")
    return F.normalize(x.abs().pow(p).mean(dim=1).flatten(1), p=2.0, dim=1, eps=eps)


@register_loss("at", kind="feature", needs="same-grid", layouts=("map",))
@fp32_compute
def attention_transfer(s: Tensor, t: Tensor, p: float = 2.0) -> Tensor:
    """Attention transfer: ``L = (1/(B H W)) sum_{b,j} (a_s[b,j] - a_t[b,j])^2`` with ``a`` the L2-normalised map
    ``mean_c |F_c|^p`` of :func:`attention_map`; student and teacher widths may differ, grids must match.

    The reduction is the authors' code's (``(at(x) - at(y)).pow(2).mean()``, also RepDistiller's), a mean over the
    batch *and* the H·W positions, rather than the paper's per-sample norm: that is what the published weight
    (β = 1000, applied as β/2 per map) was tuned for, so recipes carry over unchanged. It equals
    ``mean_b ||a_s[b] - a_t[b]||^2 / (H W)``. The channel mean (the code's) rather than the paper's sum only rescales
    ``q``, which the normalisation removes. ``|F|^p`` is the paper's (the code's ``pow(p)`` without the absolute
    value agrees for the default ``p = 2``).
    """
    if s.ndim != 4 or t.ndim != 4 or s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(f"attention transfer needs two (B, C, H, W) maps of one batch and grid, got "
                         f"{tuple(s.shape)} and {tuple(t.shape)}")
    if s.shape[0] == 0:
        raise ValueError("empty batch")
    if not p > 0:
        raise ValueError(f"p must be > 0, got {p}")
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
