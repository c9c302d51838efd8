"""Parameter-free normalisers applied to both sides of a pair after projection.

The *feature dim* is the channel dim of a map ``(B, C, H, W)`` and the last
dim of tokens ``(B, N, D)`` and vectors ``(B, D)``.

| name        | what it computes                                                           |
| ----------- | -------------------------------------------------------------------------- |
| ``none``    | nothing                                                                    |
| ``bn``      | per feature channel ``(x - mean) / sqrt(var_biased + eps)``, statistics   |
|             | over every other dim of the current batch, in train *and* eval mode       |
| ``l2``      | ``x / max(||x||_2, eps)`` along the feature dim                            |
| ``layernorm``| ``(x - mean) / sqrt(var_biased + eps)`` along the feature dim            |

``bn`` is ``nn.BatchNorm{1,2}d(affine=False, track_running_stats=False)``: no
running statistics exist, so the same normalisation happens in eval, and a
batch of one vector has no variance to normalise with (torch raises).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from kdgraph.named import Choice, parse_named

__all__ = [
    "NORMALIZERS",
    "DEFAULT_EPS",
    "parse_normalizer",
    "build_normalizer",
    "TokenBatchNorm",
    "L2Norm",
    "FeatureLayerNorm",
]

DEFAULT_EPS = {"bn": 1e-4, "l2": 1e-12, "layernorm": 1e-5}


class TokenBatchNorm(nn.Module):
    """BatchNorm over the last dim of ``(B, N, D)`` tokens, statistics over B and N.

    Differs from ``nn.BatchNorm1d`` only in layout: BatchNorm1d wants the
    channels in dim 1, tokens carry them last, so this transposes around it.
    Keyword arguments go to ``nn.BatchNorm1d``.
    """

    def __init__(self, num_features: int, **kwargs: Any) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


class L2Norm(nn.Module):
    """``F.normalize(x, p=2, dim=dim, eps=eps)``."""

    def __init__(self, dim: int, eps: float = DEFAULT_EPS["l2"]) -> None:
        super().__init__()
        self.dim = int(dim)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


class FeatureLayerNorm(nn.Module):
    """``F.layer_norm`` over the feature dim, no affine parameters.

    Differs from ``nn.LayerNorm(elementwise_affine=False)`` in that a map is
    normalised over its channel dim at each position (not over C·H·W).
    """

    def __init__(self, layout: str, num_features: int, eps: float = DEFAULT_EPS["layernorm"]) -> None:
        super().__init__()
        self.layout = layout
        self.num_features = int(num_features)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "map":
            y = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_features,), eps=self.eps)
            return y.permute(0, 3, 1, 2)
        return F.layer_norm(x, (self.num_features,), eps=self.eps)

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}, num_features={self.num_features}, eps={self.eps}"


def _eps(name: str) -> Callable[[Any], float]:
    def check(eps: Any) -> float:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps <= 0:
            raise ValueError(f"normalize {name!r}: eps must be a positive number, got {eps!r}")
        return float(eps)

    return check


NORMALIZERS: dict[str, Choice] = {"none": Choice(), **{name: Choice({"eps": _eps(name)}) for name in DEFAULT_EPS}}
"""Every normaliser name with the options it takes (checked when the spec loads, and again by the planner)."""


def parse_normalizer(spec: Any) -> tuple[str, dict[str, Any]]:
    """Check ``"bn"`` / ``{name: bn, eps: 1e-4}`` / None (``none``); returns ``(name, options)``."""
    return parse_named(spec, "normalize", NORMALIZERS, "none")


def build_normalizer(
    spec: str | Mapping[str, Any] | None, layout: str, num_features: int
) -> tuple[nn.Module | None, str | None]:
    """Build one side's normaliser for a feature of ``layout`` with ``num_features`` channels.

    Returns ``(module, step description)``, or ``(None, None)`` for ``none``.
    Call once per side: student and teacher must not share an instance.
    """
    name, opts = parse_normalizer(spec)
    if name == "none":
        return None, None
    eps = opts.get("eps", DEFAULT_EPS[name])
    if name == "bn":
        kw = dict(affine=False, track_running_stats=False, eps=eps)
        if layout == "map":
            mod: nn.Module = nn.BatchNorm2d(num_features, **kw)
        elif layout == "tokens":
            mod = TokenBatchNorm(num_features, **kw)
        else:
            mod = nn.BatchNorm1d(num_features, **kw)
        return mod, f"bn (no affine, batch stats, eps={eps:g})"
    if name == "l2":
        return L2Norm(dim=1 if layout == "map" else -1, eps=eps), "l2 over " + _feature_dim_name(layout)
    return FeatureLayerNorm(layout, num_features, eps=eps), "layernorm (no affine) over " + _feature_dim_name(layout)


def _feature_dim_name(layout: str) -> str:
    return "channels" if layout == "map" else "last dim"
