"""Neuron Selectivity Transfer (NST).

Huang & Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", arXiv:1707.01219, 2017.

Each channel of a feature map is a sample of "where this neuron fires": its flattened spatial map, L2-normalised.
The student's channels and the teacher's channels are two sets of such samples, and NST minimises their squared
maximum mean discrepancy (MMD) under the polynomial kernel ``k(x, y) = (x . y)^2``::

    f_i = F[i, :] / ||F[i, :]||_2                   i over the C channels, F[i, :] the H*W positions
    MMD^2 = (1/Ct^2) sum_{i,j} k(t_i, t_j) + (1/Cs^2) sum_{i,j} k(s_i, s_j) - (2/(Cs Ct)) sum_{i,j} k(s_i, t_j)
    L = (1/B) sum_b MMD^2_b

The channels are samples, so the widths may differ; the kernel compares spatial maps, so both sides must be on
one grid. Paper default: polynomial kernel of degree 2 with c = 0 (its best kernel); loss weight 50 in
RepDistiller's and mdistiller's CIFAR-100 scripts (``-b 50``, ``NST.LOSS.FEAT_WEIGHT = 50``).

Reference code followed: RepDistiller ``distiller_zoo/NST.py`` and mdistiller ``mdistiller/distillers/NST.py``
(``F.normalize`` over the spatial positions with eps 1e-12, the full three-term MMD averaged over channel pairs and
batch). When the grids differ, the references average-pool the larger map down to the smaller grid inside the loss,
and so does this one by default (``grid: pool``, :func:`kdgraph.losses.attention.match_grids`). That is not the
same as resizing the student's map to the teacher's grid: a pooled map averages the finer map's positions, an
interpolated one invents positions the coarser map never had, and the normalised channels (hence the kernel) differ.
``grid: interpolate`` keeps what kdgraph did before issue #33 (the student's map bilinearly resized to the
teacher's grid).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdgraph.losses.attention import GRIDS, Grid, match_grids
from kdgraph.losses.checks import check_maps
from kdgraph.losses.feature import fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["NEEDS", "nst"]

#: What the engine must give each loss of this module.
NEEDS: dict[str, tuple[str, ...]] = {
    "nst": ("pair of maps (B, C, H, W), widths may differ; different grids are matched in the loss (grid: pool)",),
}


def _poly_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_{b,i,j} (a[b, i] . b[b, j])^2`` for ``(B, Ca, N)`` and ``(B, Cb, N)``."""
    return torch.bmm(a, b.transpose(1, 2)).pow(2).mean()


@fp32_compute
def nst(student: Tensor, teacher: Tensor, *, grid: Grid = "pool") -> Tensor:
    """NST (Huang & Wang, 2017): squared MMD between the channel sets, polynomial kernel ``(x . y)^2``.

    ``L = mean_b [ mean_{i,j} (t_i . t_j)^2 + mean_{i,j} (s_i . s_j)^2 - 2 mean_{i,j} (s_i . t_j)^2 ]`` where
    ``s_i``/``t_j`` are the channels' flattened spatial maps, each L2-normalised (eps 1e-12). Maps are
    ``(B, C, *grid)``; widths may differ. ``(B, C, H, W)`` maps of different grids are first brought to one
    (``grid``, :func:`kdgraph.losses.attention.match_grids`: ``pool``, the default, average-pools the larger map to
    the smaller grid as RepDistiller does; ``interpolate`` resizes the student's map to the teacher's grid). ``L >= 0``;
    ``0`` when the two channel sets coincide.
    """
    if grid not in GRIDS:
        raise ValueError(f"nst: grid must be one of {', '.join(GRIDS)}, got {grid!r}")
    check_maps("nst", student, teacher, same_channels=False, same_grid=False)
    if student.ndim == 4 and teacher.ndim == 4:
        student, teacher = match_grids("nst", student, teacher, grid)
    check_maps("nst", student, teacher, same_channels=False)  # (B, C, N) maps must have one N
    s = F.normalize(student.reshape(student.shape[0], student.shape[1], -1), dim=2)
    t = F.normalize(teacher.reshape(teacher.shape[0], teacher.shape[1], -1), dim=2)
    return _poly_mean(t, t) + _poly_mean(s, s) - 2.0 * _poly_mean(s, t)


# the loss matches the grids itself (grid: pool, as the references): the planner resizes nothing
register_loss("nst", kind="feature", needs="any", layouts=("map",))(nst)
