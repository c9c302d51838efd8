"""The built-in zoo: small Fashion-MNIST models that train in minutes on a laptop CPU.

``fmnist_resnet`` (teacher) has stages ``layer1..layer3``; ``fmnist_cnn`` (student) has ``block1..block3``;
``fmnist_cnn_wide`` (a second teacher) is ``fmnist_cnn`` with widths 48/96/96.
Both take (1, 28, 28) images by default and return logits.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["ZOO", "FmnistResNet", "FmnistCNN", "BasicBlock", "fmnist_cnn_wide"]


def _check_sizes(model: str, **sizes: object) -> None:
    """Constructor arguments come from specs: reject what would only fail later, deep inside a forward."""
    for name, value in sizes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError(f"{model}: {name} must not be empty")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            kind = "a list of positive integers" if isinstance(value, (list, tuple)) else "a positive integer"
            raise ValueError(f"{model}: {name} must be {kind}, got {value!r}")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut, as in ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FmnistResNet(nn.Module):
    """A small ResNet: 3x3 stem, three stages of BasicBlocks (stride 1, 2, 2), global pool, linear head."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64), blocks: Sequence[int] = (2, 2, 2),
                 in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        _check_sizes("FmnistResNet", widths=widths, blocks=blocks, in_chans=in_chans, num_classes=num_classes)
        if len(widths) != len(blocks):
            raise ValueError(f"FmnistResNet: widths {list(widths)} and blocks {list(blocks)} need one entry per stage")
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        cin = widths[0]
        for i, (width, depth) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(cin if j == 0 else width, width, stride if j == 0 else 1) for j in range(depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            cin = width
        self.num_stages = len(widths)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class FmnistCNN(nn.Module):
    """A plain CNN: three conv-BN-ReLU blocks (the first two end in 2x2 max-pooling), global pool, linear head."""

    def __init__(self, widths: Sequence[int] = (16, 32, 32), in_chans: int = 1, num_classes: int = 10):
        super().__init__()
        _check_sizes("FmnistCNN", widths=widths, in_chans=in_chans, num_classes=num_classes)
        blocks, cin = [], in_chans
        for i, width in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                       nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            cin = width
        for i, block in enumerate(blocks):
            setattr(self, f"block{i + 1}", block)
        self.num_blocks = len(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_blocks):
            x = getattr(self, f"block{i + 1}")(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def fmnist_cnn_wide(widths: Sequence[int] = (48, 96, 96), in_chans: int = 1, num_classes: int = 10) -> FmnistCNN:
    """A wider FmnistCNN: the second teacher of the multi-teacher recipe (a different family from the ResNet)."""
    return FmnistCNN(widths, in_chans, num_classes)


ZOO: dict[str, Callable[..., nn.Module]] = {
    "fmnist_resnet": FmnistResNet,
    "fmnist_cnn": FmnistCNN,
    "fmnist_cnn_wide": fmnist_cnn_wide,
}
