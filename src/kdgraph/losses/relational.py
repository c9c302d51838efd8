"""Relational (probabilistic) knowledge-transfer losses.

PKT (Passalis & Tefas, ECCV 2018, "Learning Deep Representations with
Probabilistic Knowledge Transfer") matches the *conditional probability
distributions* of pairwise similarities within the batch, so student and
teacher features may have different widths: only the batch size must agree (registered with
``needs="any"``: no projector, no layout change).
Inputs are ``(B, ...)`` and are flattened to ``(B, D)``. fp16/bf16 inputs are
computed in float32 with autocast disabled (the B x B Gram matmuls included).
"""

from __future__ import annotations

import torch
from torch import Tensor

from kdgraph.losses.feature import flatten_pair, fp32_compute
from kdgraph.losses.registry import register_loss

__all__ = ["pkt_cosine", "pkt_combined", "cosine_kernel", "distance_kernel"]


def _row_normalise(k: Tensor) -> Tensor:
    return k / k.sum(dim=1, keepdim=True)


def cosine_kernel(x: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-normalised cosine kernel of ``x`` ``(B, D)``:
    ``K = (x_n x_n^T + 1) / 2`` with ``x_n = x / (||x||_2 + eps)`` (published
    PKT normalisation), then ``P[i, j] = K[i, j] / sum_j K[i, j]``.
    """
    xn = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + eps)
    return _row_normalise((xn @ xn.T + 1.0) / 2.0)


def distance_kernel(x: Tensor) -> Tensor:
    """Row-normalised distance kernel of raw ``x`` ``(B, D)``:
    ``K[i, j] = 1 / (1 + ||x_i - x_j||_2)``, then row-normalised.

    Distances come from the Gram matrix (clamped at 0, diagonal forced to 0);
    the square root has a zero (not NaN) gradient at zero distance.
    """
    sq = (x * x).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_min(0.0)
    d2 = d2 * (1.0 - torch.eye(x.shape[0], dtype=x.dtype, device=x.device))
    pos = d2 > 0
    d = torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))
    return _row_normalise(1.0 / (1.0 + d))


@register_loss("pkt", kind="relational", needs="any")
@fp32_compute
def pkt_cosine(s: Tensor, t: Tensor, eps: float = 1e-7) -> Tensor:
    """PKT with the cosine kernel, exactly as in the published code:
    ``L = mean_{i,j} P_t[i,j] log((P_t[i,j] + eps) / (P_s[i,j] + eps))``.

    ``P`` is :func:`cosine_kernel` of the flattened features. Note the mean
    runs over the full B x B matrix (``torch.mean`` in the reference code), i.e.
    it is ``1/B`` times the mean over rows of the per-row KL divergence.
    (The reference code also zeroes NaNs after normalisation; we do not, so
    NaN inputs surface instead of being masked.)
    """
    s2, t2 = flatten_pair(s, t, same_shape=False)
    ps, pt = cosine_kernel(s2, eps), cosine_kernel(t2, eps)
    return torch.mean(pt * torch.log((pt + eps) / (ps + eps)))


def _symmetric_kl(pt: Tensor, ps: Tensor, eps: float) -> Tensor:
    return torch.mean((pt - ps) * (torch.log(pt + eps) - torch.log(ps + eps)))


@register_loss("pkt_combined", kind="relational", needs="any")
@fp32_compute
def pkt_combined(s: Tensor, t: Tensor, eps: float = 1e-7) -> Tensor:
    """InDistill combined-kernel PKT (Sarridis et al., 2022):
    ``L = sum_{K in {cos, dist}} mean_{i,j} (P_t - P_s)(log(P_t + eps) - log(P_s + eps))``.

    ``P`` for the cosine kernel is :func:`cosine_kernel`; for the distance
    kernel it is :func:`distance_kernel` ``1 / (1 + ||f_i - f_j||)`` on the raw
    (un-normalised) flattened features. Both use a row-normalised kernel and a
    symmetric (Jeffreys) divergence averaged over the B x B matrix.
    """
    s2, t2 = flatten_pair(s, t, same_shape=False)
    cos_term = _symmetric_kl(cosine_kernel(t2, eps), cosine_kernel(s2, eps), eps)
    dist_term = _symmetric_kl(distance_kernel(t2), distance_kernel(s2), eps)
    return cos_term + dist_term
