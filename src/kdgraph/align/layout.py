"""Layout adapters: pooling, token grids <-> NCHW maps, spatial resize.

Features come in three layouts (shapes written without the batch dim):

- ``map``    ``(C, H, W)``  — CNN feature maps, batched as ``(B, C, H, W)``
- ``tokens`` ``(N, D)``     — transformer tokens, batched as ``(B, N, D)``
- ``vector`` ``(D,)``       — pooled features / embeddings, batched as ``(B, D)``

Token grid rule: a token sequence of length ``N`` is a square patch grid when
``N`` is a perfect square (``side = sqrt(N)``), or when ``N - 1`` is a perfect
square, in which case token 0 is taken to be a class token and is dropped.
Tokens are laid out row-major (token ``i`` sits at row ``i // side``, column
``i % side``), the order a ViT patch embedding produces with
``x.flatten(2).transpose(1, 2)``.

None of these modules has parameters or buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LAYOUTS",
    "RESIZE_MODES",
    "FeatureShape",
    "fmt_shape",
    "token_grid",
    "GlobalAvgPool",
    "ClsToken",
    "DropClsToken",
    "TokensToMap",
    "MapToTokens",
    "Resize",
]

LAYOUTS = ("map", "tokens", "vector")
RESIZE_MODES = ("bilinear", "nearest", "avgpool")


_NDIM = {"map": 3, "tokens": 2, "vector": 1}


def fmt_shape(shape: tuple[int, ...]) -> str:
    """``(64, 7, 7)``, ``(768,)``."""
    return "(" + ", ".join(str(s) for s in shape) + (",)" if len(shape) == 1 else ")")


@dataclass(frozen=True)
class FeatureShape:
    """A feature's shape without the batch dim and its layout.

    ``map`` is ``(C, H, W)``, ``tokens`` is ``(N, D)``, ``vector`` is ``(D,)``.
    """

    shape: tuple[int, ...]
    layout: str

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != _NDIM[self.layout] or any(s < 1 for s in shape):
            want = {"map": "(C, H, W)", "tokens": "(N, D)", "vector": "(D,)"}[self.layout]
            raise ValueError(f"a {self.layout} feature has shape {want} of positive sizes without the batch dim, "
                             f"got {tuple(self.shape)}")
        object.__setattr__(self, "shape", shape)

    @property
    def channels(self) -> int:
        """The feature dim: C of a map, D of tokens or a vector."""
        return self.shape[1] if self.layout == "tokens" else self.shape[0]

    def __str__(self) -> str:
        return f"{self.layout} {fmt_shape(self.shape)}"


def _isqrt_exact(n: int) -> int | None:
    if n < 1:
        return None
    r = math.isqrt(n)
    return r if r * r == n else None


def token_grid(n: int) -> tuple[int, bool] | None:
    """Return ``(side, has_cls)`` for a token count, or ``None`` if it is no grid.

    ``N`` square -> ``(sqrt(N), False)``; else ``N - 1`` square (and ``N > 1``)
    -> ``(sqrt(N - 1), True)``: token 0 is a class token. The square test comes
    first, so 1, 4, 9, ... tokens never count as having a class token.
    """
    side = _isqrt_exact(n)
    if side is not None:
        return side, False
    side = _isqrt_exact(n - 1)
    if side is not None:
        return side, True
    return None


class GlobalAvgPool(nn.Module):
    """Global average pool: ``(B, C, H, W) -> (B, C)``, ``(B, N, D) -> (B, D)``.

    On tokens this is the mean over all tokens (a class token included).
    A ``(B, D)`` vector passes through unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            return x.mean(dim=(2, 3))
        if x.dim() == 3:
            return x.mean(dim=1)
        return x


class ClsToken(nn.Module):
    """Take token 0 of ``(B, N, D)`` tokens: ``-> (B, D)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


class DropClsToken(nn.Module):
    """Drop token 0 of ``(B, N, D)`` tokens: ``-> (B, N - 1, D)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:]


class TokensToMap(nn.Module):
    """``(B, N, D)`` tokens on a ``side x side`` grid -> ``(B, D, side, side)`` map.

    With ``drop_cls`` the first token is removed first (``N = side**2 + 1``).
    """

    def __init__(self, side: int, drop_cls: bool = False) -> None:
        super().__init__()
        self.side = int(side)
        self.drop_cls = bool(drop_cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_cls:
            x = x[:, 1:]
        b, n, d = x.shape
        return x.transpose(1, 2).reshape(b, d, self.side, self.side)

    def extra_repr(self) -> str:
        return f"side={self.side}, drop_cls={self.drop_cls}"


class MapToTokens(nn.Module):
    """``(B, C, H, W)`` map -> ``(B, H*W, C)`` tokens, row-major (inverse of TokensToMap)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class Resize(nn.Module):
    """Resize a ``(B, C, H, W)`` map to ``size = (H', W')``.

    ``bilinear``: ``F.interpolate(mode="bilinear", align_corners=False)``;
    ``nearest``: ``F.interpolate(mode="nearest")``;
    ``avgpool``: ``F.adaptive_avg_pool2d`` (averages when shrinking,
    repeats when growing).
    """

    def __init__(self, size: tuple[int, int], mode: str = "bilinear") -> None:
        super().__init__()
        if mode not in RESIZE_MODES:
            raise ValueError(f"resize mode {mode!r} is not one of {', '.join(RESIZE_MODES)}")
        self.size = (int(size[0]), int(size[1]))
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "avgpool":
            return F.adaptive_avg_pool2d(x, self.size)
        if self.mode == "bilinear":
            return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return F.interpolate(x, size=self.size, mode="nearest")

    def extra_repr(self) -> str:
        return f"size={self.size}, mode={self.mode!r}"
