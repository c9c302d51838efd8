"""Auxiliary classifier heads for self-distillation (Zhang et al., "Be Your Own Teacher", ICCV 2019).

A head is attached to a shallow student map (C, H, W) and brought to the deepest stage's shape (C_d, H_d, W_d):

- optional attention: A = sigmoid(upsample(ReLU(BN(sepconv_stride2(F))))), F̃ = A ⊙ F;
- ``sepconv`` kind: stride-2 separable convolutions (depthwise 3x3 → pointwise 1x1 → BN → ReLU, twice per block as
  in the published code) while H > H_d, doubling the width up to C_d; a final 1x1 conv when widths still differ;
- ``linear`` kind: no convolutions, only global pooling and a linear map to C_d;
- global average pooling gives h_i (C_d,), a linear classifier gives the logits q_i;
- ``adapt`` (W_i): a linear map h_i → the deepest feature's width, used by the feature term ‖W_i h_i − sg(h_deep)‖.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SepConv", "AttentionGate", "AuxHead"]


class SepConv(nn.Module):
    """Separable convolution block: (depthwise 3x3 stride s → pointwise → BN → ReLU) then (stride 1, same)."""

    def __init__(self, cin: int, cout: int, stride: int = 2):
        super().__init__()
        self.op = nn.Sequential(
            nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.Conv2d(cin, cin, 1, bias=False),
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
            nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class AttentionGate(nn.Module):
    """A = sigmoid(upsample(ReLU(BN(sepconv_stride2(F))))) with the sepconv keeping the width; returns A ⊙ F."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 2, 1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.interpolate(self.conv(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return torch.sigmoid(a) * x


class AuxHead(nn.Module):
    """A shallow classifier: (attention) → bottleneck to the deepest stage → pool → linear; see the module docstring.

    ``forward(x) -> (logits, h)`` with h the pooled (C_d,) feature; ``adapt(h)`` maps h to the deepest feature width.
    """

    def __init__(self, in_shape: tuple[int, int, int], deep_shape: tuple[int, int, int], num_classes: int,
                 deep_feature_dim: int, kind: str = "sepconv", attention: bool = True):
        super().__init__()
        if kind not in ("sepconv", "linear"):
            raise ValueError(f"head kind {kind!r} is not one of sepconv, linear")
        c, h, _ = in_shape
        cd, hd, _ = deep_shape
        self.attention = AttentionGate(c) if attention and kind == "sepconv" else nn.Identity()
        layers: list[nn.Module] = []
        if kind == "sepconv":
            steps = max(0, round(math.log2(max(1, h) / max(1, hd))))
            width = c
            for i in range(steps):
                nxt = cd if i == steps - 1 else min(cd, width * 2)
                layers.append(SepConv(width, nxt, stride=2))
                width = nxt
            if width != cd:
                layers += [nn.Conv2d(width, cd, 1, bias=False), nn.BatchNorm2d(cd), nn.ReLU(inplace=True)]
            pooled = cd
        else:
            pooled = c
        self.bottleneck = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.to_deep = nn.Identity() if pooled == cd else nn.Linear(pooled, cd)
        self.classifier = nn.Linear(cd, num_classes)
        self.adapt = nn.Linear(cd, deep_feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.bottleneck(self.attention(x))
        h = self.to_deep(torch.flatten(self.pool(x), 1))
        return self.classifier(h), h
